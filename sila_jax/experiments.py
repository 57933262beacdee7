"""The experiment runner: a grid of arms x seeds, batched into few computations, summarised.

python -m sila_jax.experiments --grid=configs/grids/<name>.py --out=results/<name>
    [--dry_run | --summarize] [--max_runs=R] [--reuse=results/<other>,...]
    [--config.<field>=<value> ...]

A grid file's `get_grid()` returns {'config': the recipe every run shares, 'arms': {name:
{field: value}}, 'seeds': (...), optionally 'baselines': arm names to compare against,
'caption': what the grid asks, and 'export_seeds': seeds whose runs are exported}. A run is
(arm, seed): the recipe, the arm's overrides, then `--config` overrides (data location,
budget). Runs whose configs differ only in runs.FIELDS train as one computation
(sila_jax/runs.py) of at most --max_runs runs, in <out>/work/<group>; each finished run is
kept as <out>/runs/<arm>/seed_<s>.json and is not run again while its config is unchanged;
--reuse takes finished runs of the same config from other grids' folders (a plain baseline
that several grids share). Stopped (SIGTERM saves; SIGKILL loses at most the steps since a
checkpoint) and rerun, the runner resumes.
The runs of export_seeds are exported for inference to <out>/exports/<arm>/seed_<s> as they
finish training. It writes runs.csv (one row per run), summary.csv and summary.md (per arm:
mean, std and n of the runs that did not diverge; paired differences against each baseline
over shared seeds with their 95 % t-interval, and the effects whose interval excludes zero),
accuracy.png (bars with the 95 % t-interval of each arm's mean) and curves.png (mean curves).
"""
import csv
import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from scipy import stats

from sila_jax.configs import default
from sila_jax import config_checks
from sila_jax import export
from sila_jax import metrics
from sila_jax import runs
from sila_jax import train
from sila_jax.errors import ConfigError

GRID_KEYS = {'config', 'arms', 'seeds', 'baselines', 'caption', 'export_seeds'}
# Where the data lies and how kernels compute (the same values, at another speed): a run
# finished with other values of these is the same run.
MACHINE_FIELDS = ('data_dir', 'kernels.peer_conv', 'kernels.dynamic_conv')
# What a run's identity takes them as: their defaults.
_MACHINE_DEFAULTS = {path: config_checks.get_field(default.get_config(), path)
                     for path in MACHINE_FIELDS}
# What summary.csv gives the mean and std of per arm: the final validation, then the last
# training record (runs.csv holds every 'val_' and 'train_' metric of each run).
SUMMARY_METRICS = ('val_accuracy', 'val_loss', 'train_loss', 'train_loss_main',
                   'train_loss_siamese', 'train_loss_kl', 'train_accuracy')


@dataclasses.dataclass(frozen=True)
class Run:
  """One cell of the grid: its arm, seed and complete single-run config."""
  arm: str
  seed: int
  config: ml_collections.ConfigDict

  @property
  def digest(self) -> str:
    """Names the run's config but MACHINE_FIELDS: a finished run is reused only while this
    is unchanged."""
    identity = self.config.copy_and_resolve_references()
    identity.update_from_flattened_dict(_MACHINE_DEFAULTS)
    return _digest(identity.to_dict())

  @property
  def result_path(self) -> str:
    return os.path.join('runs', self.arm, f'seed_{self.seed}.json')


def _digest(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_grid(path: str) -> dict[str, Any]:
  """The dict `get_grid()` of the grid file at `path` returns, checked."""
  if not os.path.isfile(path):
    raise ConfigError(f'No grid file {path}.')
  return check_grid(call_file_function(path, 'get_grid'), path)


def call_file_function(path: str, name: str) -> Any:
  """What function `name` of the Python file at `path` returns (a grid or campaign file: user
  code, whose mistakes are reported as one ConfigError line)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return getattr(module, name)()
  except Exception as e:  # User code: report its mistake in one line.
    raise ConfigError(f'{path}: {type(e).__name__}: {e}') from e


def check_grid(grid: dict[str, Any], where: str) -> dict[str, Any]:
  """`grid` (as a grid file's get_grid() returns it), if well formed; `where` names it in
  the error."""
  unknown = set(grid) - GRID_KEYS
  if unknown or not {'config', 'arms', 'seeds'} <= set(grid):
    raise ConfigError(f'{where}: a grid holds config, arms and seeds (and optionally '
                      f'baselines, caption, export_seeds); got {sorted(grid)}.')
  missing = [b for b in grid.get('baselines', ()) if b not in grid['arms']]
  if missing:
    raise ConfigError(f'{where}: baselines {missing} are not arms ({", ".join(grid["arms"])}).')
  exported = grid.get('export_seeds', ())
  if (not isinstance(exported, (tuple, list))
      or any(isinstance(s, bool) or s not in grid['seeds'] for s in exported)):
    raise ConfigError(f'{where}: export_seeds must list seeds of the grid '
                      f'({", ".join(map(str, grid["seeds"]))}); got {exported!r}.')
  return grid


def plan(grid: dict[str, Any], overrides: dict[str, Any]) -> list[Run]:
  """Every (arm, seed) run of `grid`, arm-major, `overrides` applied last."""
  known = config_checks.known_fields()
  seeds = tuple(grid['seeds'])
  if (not seeds or len(set(seeds)) < len(seeds)
      or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds)):
    raise ConfigError(f'Seeds must be distinct integers, at least one; got {seeds}.')
  owned = [p for fields in (*grid['arms'].values(), overrides) for p in fields
           if p in ('seed', 'num_runs') or p.startswith('runs.')]
  if owned:
    raise ConfigError(f'The runner sets {owned[0]} itself (seeds come from the grid); drop it.')
  planned = []
  for arm, fields in grid['arms'].items():
    for seed in grid['seeds']:
      config = grid['config'].copy_and_resolve_references()
      for path in {**fields, **overrides}:
        if path not in known:
          raise ConfigError(f'Arm {arm}: {config_checks.unknown_field_message(path, known)}')
      try:
        config.update_from_flattened_dict({**fields, **overrides, 'seed': seed})
      except (TypeError, ValueError) as e:
        raise ConfigError(f'Arm {arm}: {e}') from e
      if config.eval_every_steps == 0:
        raise ConfigError(f'Arm {arm} never validates (eval_every_steps=0); the grid reports '
                          'validation accuracy.')
      planned.append(Run(arm, seed, config))
  return planned


def _structure(config: ml_collections.ConfigDict) -> str:
  """What runs sharing a computation must agree on: the config without runs.FIELDS."""
  neutral = config.copy_and_resolve_references()
  # Each field's zero of its own type: a boolean field takes no 0.
  neutral.update_from_flattened_dict({path: type(neutral[path])()
                                      for path in runs.FIELDS.values()})
  return _digest(neutral.to_dict())


def group(pending: list[Run], max_runs: int) -> list[list[Run]]:
  """Runs that can share a computation, in plan order, at most `max_runs` per group."""
  by_structure: dict[str, list[Run]] = {}
  for run in pending:
    by_structure.setdefault(_structure(run.config), []).append(run)
  return [members[i:i + max_runs] for members in by_structure.values()
          for i in range(0, len(members), max_runs)]


def group_config(members: list[Run]) -> ml_collections.ConfigDict:
  """One config training `members` together: num_runs and each run's runs.FIELDS values."""
  config = members[0].config.copy_and_resolve_references()
  config.num_runs = len(members)
  config.update_from_flattened_dict({
      f'runs.{name}': tuple(run.config[path] for run in members)
      for name, path in runs.FIELDS.items()})
  return config


def _history(workdir: str, run: int, num_runs: int) -> dict[str, list[list[float]]]:
  """Run `run`'s training loss of the main head (comparable across arms, unlike the total)
  and validation accuracy by step, from the workdir's metrics: {'train_loss_main': [[step,
  value], ...], 'val_accuracy': [...]}."""
  def series(kind: str, name: str) -> list[list[float]]:
    name = runs.run_metric(name, run) if num_runs > 1 else name
    return [[r['step'], r[name]] for r in metrics.read(workdir, kind) if name in r]
  return {'train_loss_main': series(metrics.TRAIN, 'loss_main'),
          'val_accuracy': series(metrics.VALIDATION, 'accuracy')}


def _run_metrics(summary: dict[str, float], run: int, num_runs: int) -> dict[str, float]:
  """Run `run`'s values from metrics summarised by runs.summarize."""
  if num_runs == 1:
    return summary
  prefix = runs.run_metric('', run)
  return {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}


def export_dir(out: str, run: Run) -> str:
  """Where `run`'s export goes: <out>/exports/<arm>/seed_<s>."""
  return os.path.join(out, 'exports', run.arm, f'seed_{run.seed}')


def train_group(members: list[Run], out: str, export_seeds: tuple[int, ...] = ()) -> str | None:
  """Trains `members` as one computation, exports those whose seed is in `export_seeds` and
  writes each run's result. Returns None, or the stop that cut it short: 'SIGTERM' |
  'Ctrl-C'.

  Each result records 'diverged_step': the first step whose loss was non-finite, or None.
  """
  config = group_config(members)
  workdir = os.path.join(out, 'work', _digest([(r.arm, r.seed, r.digest) for r in members]))
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
    record = {'arm': run.arm, 'seed': run.seed, 'step': result['step'],
              'diverged_step': diverged_steps[r],
              **{f'val_{k}': v for k, v in _run_metrics(result['val'], r, len(members)).items()},
              **{f'train_{k}': v for k, v in _run_metrics(result['train'], r, len(members)).items()
                 if k not in train.TIMINGS},
              'config': run.digest, 'group_runs': len(members), 'group_seconds': seconds,
              'history': _history(workdir, r, len(members))}
    _save(out, run, record)
  return None


def finished(run: Run, out: str) -> dict[str, Any] | None:
  """The run's saved result, if it was made with the run's current config."""
  path = os.path.join(out, run.result_path)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return record if record['config'] == run.digest else None


def reuse(planned: list[Run], out: str, others: list[str]) -> int:
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


def _save(out: str, run: Run, record: dict[str, Any]) -> None:
  path = os.path.join(out, run.result_path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)


def _mean_and_std(values: list[float]) -> tuple[float, float]:
  """The mean and the sample standard deviation (nan for one value)."""
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else np.nan


def t_halfwidth(std: float, n: int) -> float:
  """Half the width of the 95 % t-interval of a mean of `n` values of sample std `std`:
  t_{0.975, n-1} * std / sqrt(n); nan for n < 2 (no interval). scipy's t quantile rather
  than a hand-written table."""
  return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else np.nan


def paired(deltas: list[float]) -> dict[str, float]:
  """{'mean', 'std', 'n', 'ci_low', 'ci_high'} of paired differences: their mean, sample
  std, count and 95 % t-interval of the mean (std and interval nan for one difference)."""
  mean, std = _mean_and_std(deltas)
  half = t_halfwidth(std, len(deltas))
  return {'mean': mean, 'std': std, 'n': len(deltas), 'ci_low': mean - half,
          'ci_high': mean + half}


def diverged(record: dict[str, Any]) -> bool:
  """Whether the run's loss became non-finite (results saved before this was recorded did
  not diverge: training then stopped the whole computation on a non-finite loss)."""
  return record.get('diverged_step') is not None


def summarize(grid: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per arm (grid order): n (runs that did not diverge), 'diverged' (runs that did), mean and
  sample std of SUMMARY_METRICS over the n runs, and for each baseline b `vs_<b>_mean`,
  `_std`, `_n`, `_ci_low`, `_ci_high` (see `paired`) of the paired difference in validation
  accuracy over the seeds where neither diverged."""
  kept = [r for r in records if not diverged(r)]
  rows = []
  for arm in grid['arms']:
    mine = {r['seed']: r for r in kept if r['arm'] == arm}
    row = {'arm': arm, 'n': len(mine),
           'diverged': sum(r['arm'] == arm and diverged(r) for r in records)}
    for metric in SUMMARY_METRICS:
      values = [r[metric] for r in mine.values() if metric in r]
      if values:
        row[f'{metric}_mean'], row[f'{metric}_std'] = _mean_and_std(values)
    for baseline in grid.get('baselines', ()):
      theirs = {r['seed']: r for r in kept if r['arm'] == baseline}
      shared = sorted(set(mine) & set(theirs))
      if baseline != arm and shared:
        deltas = [mine[s]['val_accuracy'] - theirs[s]['val_accuracy'] for s in shared]
        row.update({f'vs_{baseline}_{k}': v for k, v in paired(deltas).items()})
    rows.append(row)
  return rows


def recipe(config: ml_collections.ConfigDict, steps: int) -> str:
  """One line naming the budget every run of the grid had."""
  model = config.model if config.width == 1 else f'{config.model} at width {config.width:g}'
  return (f'{model}, {steps} steps of batch {config.batch_size} '
          f'({steps * config.batch_size:,} images), lr {config.optimizer.learning_rate:g} '
          f'{config.optimizer.schedule}, {config.dtype}, data {config.dataset} '
          f'{config.train_split} / {config.eval_split}')


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)


def _percent(row: dict[str, Any], name: str) -> str:
  if f'{name}_mean' not in row:
    return ''
  return f"{100 * row[f'{name}_mean']:.2f} ± {100 * row[f'{name}_std']:.2f}"


def _delta(row: dict[str, Any], baseline: str) -> str:
  """A paired difference in percent points, its 95 % interval in brackets when it has one:
  '-2.07 [-5.67, 1.53]'."""
  name = f'vs_{baseline}'
  if f'{name}_mean' not in row:
    return ''
  if row[f'{name}_n'] < 2:
    return f"{100 * row[f'{name}_mean']:.2f}"
  return (f"{100 * row[f'{name}_mean']:.2f} "
          f"[{100 * row[f'{name}_ci_low']:.2f}, {100 * row[f'{name}_ci_high']:.2f}]")


def effects(grid: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
  """The 'Effects' lines under the table: one per (arm, baseline) whose paired interval
  excludes zero, or one line saying there is none; [] without any paired difference."""
  compared = [(row, b) for b in grid.get('baselines', ()) for row in rows
              if f'vs_{b}_mean' in row]
  found = []
  for row, b in compared:
    low, high, n = row[f'vs_{b}_ci_low'], row[f'vs_{b}_ci_high'], row[f'vs_{b}_n']
    if low > 0 or high < 0:  # False for nan: one seed shows no effect.
      way, low, high = ('ahead of', low, high) if low > 0 else ('behind', -high, -low)
      found.append(f"- {row['arm']} is {way} {b} by {100 * abs(row[f'vs_{b}_mean']):.2f} "
                   f'points [{100 * low:.2f}, {100 * high:.2f}], n = {n}')
  if compared and not found:
    counts = ', '.join(str(n) for n in sorted({row[f'vs_{b}_n'] for row, b in compared}))
    found.append(f'- none: no paired difference is distinguishable from zero at n = {counts}')
  return found


def markdown(grid: dict[str, Any], rows: list[dict[str, Any]], caption: str) -> str:
  """summary.md: the caption and the notation, one table row per arm (a 'diverged' column
  only if some run diverged), then the effects whose 95 % interval excludes zero."""
  baselines = list(grid.get('baselines', ()))
  show_diverged = any(row['diverged'] for row in rows)
  header = (['arm', 'n'] + ['diverged'] * show_diverged
            + ['val accuracy %', 'val loss', 'train loss (main head)']
            + [f'Δ acc vs {b} (paired) %' for b in baselines])
  notation = (['Δ acc vs b: the mean of (arm − b) in validation accuracy over the seeds both '
               'arms finished without diverging, in percent points, with its 95 % t-interval '
               'in brackets (none for one seed).'] * bool(baselines)
              + ['diverged: runs whose loss became non-finite, left out of n and of every '
                 'mean.'] * show_diverged)
  lines = [caption, '', *([' '.join(notation), ''] if notation else []),
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    cells = [row['arm'], str(row['n'])] + [str(row['diverged'])] * show_diverged
    cells += [_percent(row, 'val_accuracy'),
              f"{row.get('val_loss_mean', float('nan')):.4f}",
              f"{row.get('train_loss_main_mean', float('nan')):.4f}"]
    cells += [_delta(row, b) for b in baselines]
    lines.append('| ' + ' | '.join(cells) + ' |')
  found = effects(grid, rows)
  if found:
    lines += ['', 'Effects (95 % interval excludes 0):', *found]
  return '\n'.join(lines) + '\n'


def _curves(records: list[dict[str, Any]]) -> dict[str, dict[str, tuple]]:
  """{arm: {'train_loss_main' | 'val_accuracy': (steps, mean over seeds)}} from the runs'
  histories."""
  per_arm: dict[str, dict[str, list]] = {}
  for record in records:
    for name, points in record['history'].items():
      per_arm.setdefault(record['arm'], {}).setdefault(name, []).append(
          {step: value for step, value in points})
  curves = {}
  for arm, named in per_arm.items():
    for name, seeds in named.items():
      steps = sorted(set.intersection(*(set(s) for s in seeds)))
      curves.setdefault(arm, {})[name] = (steps, [np.mean([s[t] for s in seeds]) for t in steps])
  return curves


def plot(out: str, rows: list[dict[str, Any]], records: list[dict[str, Any]],
         caption: str) -> None:
  """accuracy.png (validation accuracy per arm, the 95 % t-interval of its mean as error
  bars; none for one seed) and curves.png."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # Only the runner draws.
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  done = [row for row in rows if 'val_accuracy_mean' in row]
  if done:  # Not when every run diverged.
    means = np.array([100 * r['val_accuracy_mean'] for r in done])
    # nan for one seed: matplotlib draws no error bar there.
    halves = np.array([100 * t_halfwidth(r['val_accuracy_std'], r['n']) for r in done])
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(done) + 1.5), 4))
    ax.bar(range(len(done)), means, yerr=halves, capsize=4, color='tab:blue')
    ax.set_xticks(range(len(done)), [f"{r['arm']}\n(n={r['n']})" for r in done], rotation=30,
                  ha='right', fontsize=8)
    low, high = min(means - np.nan_to_num(halves)), max(means + np.nan_to_num(halves))
    ax.set_ylim(max(0, low - 0.5 * (high - low) - 1), high + 0.2 * (high - low) + 0.5)
    ax.set_ylabel('validation accuracy (%)\nerror bars: 95 % t-interval of the mean', fontsize=8)
    ax.set_title(caption.splitlines()[0][:100], fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'accuracy.png'), dpi=120)
    plt.close(fig)

  curves = _curves(records)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for arm, named in curves.items():
    for ax, name in zip(axes, ('train_loss_main', 'val_accuracy')):
      steps, values = named.get(name, ([], []))
      ax.plot(steps, values, marker='.' if len(steps) < 20 else None, label=arm)
  for ax, label in zip(axes, ('training loss of the main head (mean over seeds)',
                              'validation accuracy (mean over seeds)')):
    ax.set_xlabel('step')
    ax.set_ylabel(label)
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'curves.png'), dpi=120)
  plt.close(fig)


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
  grid = load_grid(grid_path)
  planned = plan(grid, overrides)
  for run in planned:  # Every mistake before anything compiles.
    config_checks.check_config(run.config, 1)
  if reuse_from and not dry_run:
    print(f'{reuse(planned, out, list(reuse_from))} finished run(s) taken from '
          f'{", ".join(reuse_from)}.')
  pending = [run for run in planned if finished(run, out) is None]
  groups = group(pending, max_runs)
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


def write_summaries(grid: dict[str, Any], planned: list[Run], out: str, command: str,
                    title: str) -> list[dict[str, Any]]:
  """Writes runs.csv, summary.csv, summary.md, accuracy.png and curves.png to `out` from the
  finished runs of `planned`; returns the summary rows ([] if none has finished).

  `command` is the one that trains the runs; `title` opens the caption.
  """
  records = [r for r in (finished(run, out) for run in planned) if r is not None]
  if not records:
    return []
  rows = summarize(grid, records)
  steps = records[0]['step']
  caption = (f"{title}\n\n"
             f"Budget: {recipe(planned[0].config, steps)}; seeds "
             f"{', '.join(map(str, grid['seeds']))}; validation accuracy after the last step, "
             f"mean ± sample std over seeds (n: seeds finished without diverging). "
             f"Command: `{command}`.")
  _write_csv(os.path.join(out, 'runs.csv'), [
      {k: v for k, v in r.items() if k != 'history'} for r in records])
  _write_csv(os.path.join(out, 'summary.csv'), rows)
  with open(os.path.join(out, 'summary.md'), 'w') as f:
    f.write(markdown(grid, rows, caption))
  plot(out, rows, [r for r in records if not diverged(r)], caption)
  print(f'Wrote runs.csv, summary.csv, summary.md, accuracy.png and curves.png to {out}.')
  return rows


def main() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from sila_jax import cli  # pylint: disable=g-import-not-at-top

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
    given = [arg[len('--config.'):].split('=', 1)[0] for arg in sys.argv
             if arg.startswith('--config.')]
    overrides = {path: config_flag.value[path] for path in given}
    run_grid(grid_flag.value, out_flag.value, overrides, dry_run=dry_run.value,
             summarize_only=summarize_only.value, max_runs=max_runs.value,
             reuse_from=tuple(reuse_from.value))
  cli.run(run)


if __name__ == '__main__':
  main()
