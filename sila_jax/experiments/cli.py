"""The experiment runner's flags, into running.run_grid (the usage: __main__.py, which
`python -m sila_jax.experiments` runs)."""
import sys

from absl import flags
from ml_collections import config_flags

from sila_jax.commands import cli
from sila_jax.configs import default
from sila_jax.experiments import running


def main() -> None:
  # A config dict flag applies --config overrides as it is defined: name a bad one first.
  problem = cli.unknown_override(sys.argv)
  if problem:
    sys.exit(f'{sys.argv[0]}: {problem}')
  grid_flag = flags.DEFINE_string('grid', None, 'Grid file (configs/grids/<name>.py).')
  out_flag = flags.DEFINE_string('out', None, 'Output directory (results/<name>).')
  dry_run = flags.DEFINE_bool('dry_run', False, 'List what would run; train nothing.')
  summarize_only = flags.DEFINE_bool('summarize', False, 'Write the summaries of the finished '
                                     'runs; train nothing.')
  max_runs = flags.DEFINE_integer('max_runs', 64, 'At most this many runs per computation.')
  reuse_from = flags.DEFINE_list('reuse', [], "Other grids' output folders whose finished runs "
                                 'of the same config count as finished here.')
  # Parsed against the schema, so values take the fields' types; only those given apply.
  config_flag = config_flags.DEFINE_config_dict('config', default.get_config(),
                                                'Overrides for every run.')
  flags.mark_flags_as_required(['grid', 'out'])

  def run(argv):
    del argv
    overrides = {path: config_flag.value[path] for path in cli.overridden_fields(sys.argv)}
    running.run_grid(grid_flag.value, out_flag.value, overrides, dry_run=dry_run.value,
                     summarize_only=summarize_only.value, max_runs=max_runs.value,
                     reuse_from=tuple(reuse_from.value))
  cli.run_command(run)
