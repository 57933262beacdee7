"""experiments.statistics: per-arm means of the runs that did not diverge, and paired
differences with their 95 % t-intervals."""
import math

import pytest

from sila_jax.experiments import statistics
from tests.helpers import grid_of, record, records_of


def test_paired_differences_get_scipys_t_interval():
  found = statistics.paired([-0.01, -0.03, -0.02])
  half = 4.3027 * 0.01 / math.sqrt(3)  # t_{0.975, 2} = 4.3027.
  assert found['n'] == 3 and found['mean'] == pytest.approx(-0.02)
  assert found['std'] == pytest.approx(0.01)
  assert (found['ci_low'], found['ci_high']) == pytest.approx((-0.02 - half, -0.02 + half),
                                                              rel=1e-4)
  one = statistics.paired([0.05])  # One difference: no spread, no interval.
  assert one['mean'] == 0.05 and math.isnan(one['std']) and math.isnan(one['ci_low'])
  assert math.isnan(statistics.t_halfwidth(1.0, 1))


def test_the_paired_difference_is_taken_seed_by_seed():
  grid = grid_of(('plain', 'twin'), (0, 1, 2))
  rows = statistics.summarize(grid, records_of({'twin': (-0.01, -0.03, -0.02)},
                                               (0.5, 0.6, 0.7)))
  twin = rows[1]
  assert twin['n'] == 3 and twin['diverged'] == 0 and twin['vs_plain_n'] == 3
  paired = statistics.paired([-0.01, -0.03, -0.02])
  assert {k: twin[f'vs_plain_{k}'] for k in paired} == pytest.approx(paired)
  assert twin['val_accuracy_mean'] == pytest.approx(0.58)
  assert twin['val_accuracy_std'] == pytest.approx(0.095394, rel=1e-4)  # Of 49, 57, 68 %.
  assert not any(k.startswith('vs_') for k in rows[0])  # The baseline against itself.


def test_diverged_runs_leave_n_and_the_means_and_are_counted():
  grid = grid_of(('plain', 'twin', 'lone'), (0, 1, 2))
  made = records_of({'twin': (-0.01, -0.03, -0.02)}, (0.5, 0.6, 0.7))
  made[4] = record('twin', 1, float('nan'), diverged_step=7)  # Its accuracy is not a number.
  made.append(record('lone', 2, 0.75))
  assert statistics.diverged(made[4]) and not statistics.diverged(made[0])
  assert not statistics.diverged({'arm': 'plain'})  # Saved before divergence was recorded.
  rows = {row['arm']: row for row in statistics.summarize(grid, made)}
  assert (rows['plain']['n'], rows['plain']['diverged']) == (3, 0)
  assert (rows['twin']['n'], rows['twin']['diverged']) == (2, 1)
  assert rows['twin']['val_accuracy_mean'] == pytest.approx((0.49 + 0.68) / 2)
  assert rows['twin']['vs_plain_n'] == 2
  assert rows['twin']['vs_plain_mean'] == pytest.approx(-0.015)
  assert rows['lone']['vs_plain_n'] == 1 and math.isnan(rows['lone']['vs_plain_ci_low'])
