"""Running a grid: each group of runs trained as one computation in <out>/work/<group>, each
finished run kept as <out>/runs/<arm>/seed_<s>.json and not run again while its config is
unchanged, the runs of export_seeds exported to <out>/exports/<arm>/seed_<s>.

--reuse takes finished runs of the same config from other grids' folders (a plain baseline
that several grids share). Stopped (SIGTERM saves; SIGKILL loses at most the steps since a
checkpoint) and rerun, the runner resumes.
"""
import dataclasses
import json
import os
import sys
import time
from typing import Any

from absl import logging

from sila_jax import config_checks
from sila_jax.errors import ConfigError
from sila_jax.evaluation import export
from sila_jax.experiments import planning
from sila_jax.experiments import reports
from sila_jax.training import metrics
from sila_jax.training import runs
from sila_jax.training import train


def own(summary: dict[str, float], run: int | None) -> dict[str, float]:
  """Run `run`'s values in a summary (runs.summarize) under one run's names:
  'run_1/peer_0/loss' -> 'peer_0/loss'. `run` None: the only run, whose names hold no run."""
  mine = {}
  for written, value in summary.items():
    name = metrics.parse(written)
    if name.run == run:
      mine[str(dataclasses.replace(name, run=None))] = value
  return mine


def history(workdir: str, run: int | None) -> dict[str, list[list[float]]]:
  """Run `run`'s (None: the only run's) training loss of the main head (comparable across
  arms, unlike the total) and validation accuracy by step, from the workdir's metrics:
  {'train_loss_main': [[step, value], ...], 'val_accuracy': [...]}."""
  def series(kind: str, metric: str) -> list[list[float]]:
    written = metrics.name(metric, run=run)
    return [[r['step'], r[written]] for r in metrics.read(workdir, kind) if written in r]
  return {'train_loss_main': series(metrics.TRAIN, 'loss_main'),
          'val_accuracy': series(metrics.VALIDATION, 'accuracy')}


def export_dir(out: str, run: planning.Cell) -> str:
  """Where `run`'s export goes: <out>/exports/<arm>/seed_<s>."""
  return os.path.join(out, 'exports', run.arm, f'seed_{run.seed}')


def train_group(members: list[planning.Cell], out: str,
                export_seeds: tuple[int, ...] = ()) -> str | None:
  """Trains `members` as one computation, exports those whose seed is in `export_seeds` and
  writes each run's result. Returns None, or the stop that cut it short: 'SIGTERM' |
  'Ctrl-C'.

  Each result records 'diverged_step': the first step whose loss was non-finite, or None.
  """
  config = planning.group_config(members)
  workdir = planning.group_workdir(out, members)
  logging.info('Training %d run(s) together in %s: %s', len(members), workdir,
               ', '.join(f'{r.arm}/seed {r.seed}' for r in members))
  start = time.perf_counter()
  result = train.train_and_evaluate(config, workdir)
  if result['status'] == 'stopped':
    return result['stopped_by']
  seconds = time.perf_counter() - start
  # Exports before results: a run whose result is saved counts as finished and never returns
  # here, so a stop in between must leave the export to be written again on the rerun.
  for r, run in enumerate(members):
    if run.seed in export_seeds:
      export.export(config, workdir, export_dir(out, run), run=r)
  # train_and_evaluate returned no 'diverged' before it recorded divergence per run.
  diverged_steps = result.get('diverged', [None] * len(members))
  for r, run in enumerate(members):
    named = runs.named_run(r, len(members))
    record = {'arm': run.arm, 'seed': run.seed, 'step': result['step'],
              'diverged_step': diverged_steps[r],
              **{f'val_{k}': v for k, v in own(result['val'], named).items()},
              **{f'train_{k}': v for k, v in own(result['train'], named).items()
                 if k not in train.TIMINGS},
              'config': run.digest, 'group_runs': len(members), 'group_seconds': seconds,
              'history': history(workdir, named)}
    _save(out, run, record)
  return None


def finished(run: planning.Cell, out: str) -> dict[str, Any] | None:
  """The run's saved result, if it was made with the run's current config."""
  path = os.path.join(out, run.result_path)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return record if record['config'] == run.digest else None


def reuse(planned: list[planning.Cell], out: str, others: list[str]) -> int:
  """Copies into `out` the results in `others` of runs with the same config as a planned
  run not finished in `out`; returns how many."""
  found = {}
  for other in others:
    for folder, _, files in os.walk(os.path.join(other, 'runs')):
      for name in (f for f in files if f.endswith('.json')):
        with open(os.path.join(folder, name)) as f:
          record = json.load(f)
        found[record['config']] = record
  copied = 0
  for run in planned:
    if finished(run, out) is None and run.digest in found:
      _save(out, run, {**found[run.digest], 'arm': run.arm})
      copied += 1
  return copied


def _save(out: str, run: planning.Cell, record: dict[str, Any]) -> None:
  path = os.path.join(out, run.result_path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  metrics.write_atomically(path, json.dumps(record, indent=2))


def write_summaries(grid: dict[str, Any], planned: list[planning.Cell], out: str,
                    command: str, title: str) -> list[dict[str, Any]]:
  """The reports (reports.write) of the finished runs of `planned` in `out`; returns the
  summary rows ([] if none has finished, and writes nothing).

  `command` is the one that trains the runs; `title` opens the caption.
  """
  records = [r for r in (finished(run, out) for run in planned) if r is not None]
  if not records:
    return []
  caption = reports.caption(grid, planned[0].config, records[0]['step'], command, title)
  return reports.write(out, grid, records, caption)


def run_grid(grid_path: str, out: str, overrides: dict[str, Any], *, dry_run: bool = False,
             summarize_only: bool = False, max_runs: int = 64,
             reuse_from: tuple[str, ...] = ()) -> list[dict[str, Any]]:
  """Trains the runs of the grid that are not finished, then writes the summaries (of the
  runs finished so far, if SIGTERM or Ctrl-C stopped it; after Ctrl-C it then raises
  KeyboardInterrupt).

  Returns the summary rows; with `dry_run`, prints the plan and trains nothing; with
  `summarize_only`, writes the summaries of the finished runs and trains nothing.
  """
  if max_runs < 1:
    raise ConfigError(f'max_runs must be positive, got {max_runs}.')
  grid = planning.load_grid(grid_path)
  planned = planning.plan(grid, overrides)
  for run in planned:  # Every mistake before anything compiles.
    config_checks.check_config(run.config, 1)
  if reuse_from and not dry_run:
    print(f'{reuse(planned, out, list(reuse_from))} finished run(s) taken from '
          f'{", ".join(reuse_from)}.')
  pending = [run for run in planned if finished(run, out) is None]
  groups = planning.group(pending, max_runs)
  print(f'{len(planned)} runs planned, {len(planned) - len(pending)} finished; '
        f'{len(pending)} to train as {len(groups)} computation(s).')
  for members in groups:
    print(f"  {len(members)} together: {', '.join(f'{r.arm}/seed {r.seed}' for r in members)}")
  if dry_run:
    return []
  stopped_by = None
  for members in [] if summarize_only else groups:
    stopped_by = train_group(members, out, tuple(grid.get('export_seeds', ())))
    if stopped_by:
      print(f'Stopped by {stopped_by}; rerun the same command to resume ({out}). The '
            'summaries hold the runs finished so far.')
      break
  command = 'python -m sila_jax.experiments ' + ' '.join(
      arg for arg in sys.argv[1:] if arg != '--summarize')  # The command that trains them.
  rows = write_summaries(grid, planned, out, command,
                         grid.get('caption', os.path.basename(grid_path)))
  if stopped_by == 'Ctrl-C':
    raise KeyboardInterrupt  # As Ctrl-C elsewhere: the command exits 130, as sila-train.
  return rows
