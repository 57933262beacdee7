"""The experiment runner: trains a grid's unfinished runs and writes its summaries.

python -m sila_jax.experiments --grid=configs/grids/<name>.py --out=results/<name>
    [--dry_run | --summarize] [--max_runs=R] [--reuse=results/<other>,...]
    [--config.<field>=<value> ...]

The `--config` overrides apply to every run of the grid (data location, budget). Each
finished run is kept in <out>/runs/<arm>/seed_<s>.json and not trained again; the runs of
the grid's export_seeds are exported to <out>/exports/<arm>/seed_<s>; the summaries are
runs.csv, summary.csv, summary.md, accuracy.png and curves.png in <out>. See
docs/experiments.md.
"""
import sys

from sila_jax.experiments import cli

sys.argv[0] = 'python -m sila_jax.experiments'  # What --help and its one-line errors name.
cli.main()
