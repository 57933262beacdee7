"""The figures a grid's summary gives: per arm the mean and sample std of the runs that did
not diverge, and paired differences against each baseline with their 95 % t-interval."""
from typing import Any

import numpy as np
from scipy import stats

from sila_jax import methods

# What summary.csv gives the mean and std of per arm: the final validation, then the last
# training record, with every method's loss parts (runs.csv holds every 'val_' and 'train_'
# metric of each run).
SUMMARY_METRICS = ('val_accuracy', 'val_loss', 'train_loss', 'train_loss_main',
                   *dict.fromkeys(f'train_{name}' for method in methods.METHODS.values()
                                  for name in method.metric_names), 'train_accuracy')


def mean_and_std(values: list[float]) -> tuple[float, float]:
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
  mean, std = mean_and_std(deltas)
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
        row[f'{metric}_mean'], row[f'{metric}_std'] = mean_and_std(values)
    for baseline in grid.get('baselines', ()):
      theirs = {r['seed']: r for r in kept if r['arm'] == baseline}
      shared = sorted(set(mine) & set(theirs))
      if baseline != arm and shared:
        deltas = [mine[s]['val_accuracy'] - theirs[s]['val_accuracy'] for s in shared]
        row.update({f'vs_{baseline}_{k}': v for k, v in paired(deltas).items()})
    rows.append(row)
  return rows
