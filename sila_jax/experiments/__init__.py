"""The experiment runner: a grid of arms x seeds, batched into few computations, summarised
(`python -m sila_jax.experiments`; docs/experiments.md).

planning.py   grid files into runs (Run, plan) and groups that train as one computation
running.py    training a group, saving, skipping and reusing finished runs, run_grid
statistics.py means, sample stds, paired differences and their 95 % t-intervals
reports.py    runs.csv, summary.csv, summary.md, accuracy.png and curves.png
cli.py        the command line (__main__.py runs it)
"""
