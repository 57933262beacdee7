"""What a grid's finished runs are reported as: runs.csv (one row per run), summary.csv and
summary.md (per arm, from statistics.summarize, with the effects whose 95 % interval
excludes zero), accuracy.png (bars with the 95 % t-interval of each arm's mean) and
curves.png (each arm's mean curves, drawn by sila_jax.experiments.plot)."""
import csv
import os
from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from sila_jax.experiments import plot
from sila_jax.experiments import statistics
from sila_jax.training import metrics

# A run's history (running.history) as curves.png draws it: {name: (panel, line kind)}.
_DRAWN = {'train_loss_main': ('loss', metrics.TRAIN),
          'val_accuracy': ('accuracy', metrics.VALIDATION)}


def recipe(config: ml_collections.ConfigDict, steps: int) -> str:
  """One line naming the budget every run of the grid had."""
  model = config.model if config.width == 1 else f'{config.model} at width {config.width:g}'
  return (f'{model}, {steps} steps of batch {config.batch_size} '
          f'({steps * config.batch_size:,} images), lr {config.optimizer.learning_rate:g} '
          f'{config.optimizer.schedule}, {config.dtype}, data {config.dataset} '
          f'{config.train_split} / {config.eval_split}')


def caption(grid: dict[str, Any], config: ml_collections.ConfigDict, steps: int,
            command: str, title: str) -> str:
  """The caption of summary.md: `title`, then the budget of the runs (`config`, `steps`),
  the seeds, what the figures are and `command`, the one that trains the runs."""
  return (f"{title}\n\n"
          f"Budget: {recipe(config, steps)}; seeds "
          f"{', '.join(map(str, grid['seeds']))}; validation accuracy after the last step, "
          f"mean ± sample std over seeds (n: seeds finished without diverging). "
          f"Command: `{command}`.")


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


def mean_curves(records: list[dict[str, Any]]) -> plot.Curves:
  """The runs' histories as sila_jax.experiments.plot draws them: {'loss' | 'accuracy':
  {'<arm> train' | '<arm> validation': (steps, mean over the arm's runs)}}, at the steps all
  its runs have."""
  per_arm: dict[tuple[str, str], list[dict[int, float]]] = {}
  for record in records:
    for name, points in record['history'].items():
      per_arm.setdefault((record['arm'], name), []).append(dict(points))
  data: plot.Curves = {'loss': {}, 'accuracy': {}}
  for (arm, name), seeds in per_arm.items():
    steps = sorted(set.intersection(*(set(s) for s in seeds)))
    panel, kind = _DRAWN[name]
    data[panel][f'{arm} {kind}'] = (steps, [float(np.mean([s[t] for s in seeds]))
                                            for t in steps])
  return data


def _draw_accuracy(rows: list[dict[str, Any]], caption: str, path: str) -> None:
  """Validation accuracy per arm to the PNG `path`, the 95 % t-interval of its mean as error
  bars (none for one seed); nothing when every run diverged."""
  done = [row for row in rows if 'val_accuracy_mean' in row]
  if not done:
    return
  means = np.array([100 * r['val_accuracy_mean'] for r in done])
  # nan for one seed: matplotlib draws no error bar there.
  halves = np.array([100 * statistics.t_halfwidth(r['val_accuracy_std'], r['n']) for r in done])
  fig = Figure(figsize=(max(4, 0.9 * len(done) + 1.5), 4))
  ax = fig.subplots()
  ax.bar(range(len(done)), means, yerr=halves, capsize=4, color='tab:blue')
  ax.set_xticks(range(len(done)), [f"{r['arm']}\n(n={r['n']})" for r in done], rotation=30,
                ha='right', fontsize=8)
  low, high = min(means - np.nan_to_num(halves)), max(means + np.nan_to_num(halves))
  ax.set_ylim(max(0, low - 0.5 * (high - low) - 1), high + 0.2 * (high - low) + 0.5)
  ax.set_ylabel('validation accuracy (%)\nerror bars: 95 % t-interval of the mean', fontsize=8)
  ax.set_title(caption.splitlines()[0][:100], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def write(out: str, grid: dict[str, Any], records: list[dict[str, Any]],
          caption: str) -> list[dict[str, Any]]:
  """Writes runs.csv, summary.csv, summary.md, accuracy.png and curves.png of the finished
  runs' `records` (as running saves them) to `out`; returns the summary rows."""
  rows = statistics.summarize(grid, records)
  _write_csv(os.path.join(out, 'runs.csv'), [
      {k: v for k, v in r.items() if k != 'history'} for r in records])
  _write_csv(os.path.join(out, 'summary.csv'), rows)
  with open(os.path.join(out, 'summary.md'), 'w') as f:
    f.write(markdown(grid, rows, caption))
  _draw_accuracy(rows, caption, os.path.join(out, 'accuracy.png'))
  kept = [r for r in records if not statistics.diverged(r)]
  plot.draw(mean_curves(kept), os.path.join(out, 'curves.png'),
            title="each arm's mean over the seeds that did not diverge")
  print(f'Wrote runs.csv, summary.csv, summary.md, accuracy.png and curves.png to {out}.')
  return rows
