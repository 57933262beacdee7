"""benchmarks.batched_runs: the campaign's throughput stage, R runs as one computation."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import batched_runs
from tests.helpers import ROOT, xla_flags

FIELDS = {'device_kind', 'platform', 'jax', 'model', 'width', 'method', 'dtype', 'batch_size',
          'num_runs', 'peer_conv', 'step_ms', 'images_per_sec', 'compile_s'}


def batched(*args):
  process = subprocess.run([sys.executable, '-m', 'benchmarks.batched_runs', *args], cwd=ROOT,
                           env={**os.environ, 'XLA_FLAGS': xla_flags()}, capture_output=True, text=True,
                           timeout=900)
  assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
  return process.stdout


def read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_quick_measures_every_cell_once_and_a_second_call_measures_nothing(tmp_path):
  out = tmp_path / 'batched.jsonl'
  printed = batched('--quick', '--out', str(out))
  rows = read(out)
  assert [(r['num_runs'], r['method']) for r in rows] == [
      (1, 'plain'), (1, 'sila'), (2, 'plain'), (2, 'sila')]
  for row in rows:
    assert FIELDS <= set(row)
    assert (row['model'], row['width'], row['dtype'], row['batch_size'], row['peer_conv'],
            row['platform']) == ('resnet20', 0.25, 'bfloat16', 16, 'sliced', 'cpu')
    assert row['step_ms'] > 0 and row['compile_s'] > 0
    # Every run's images: R x batch per step.
    assert abs(row['images_per_sec'] * row['step_ms'] / 1e3 - 16 * row['num_runs']) < 1e-6
  assert 'SiLa/plain step time:' in printed and '(x1.00)' in printed

  again = batched('--quick', '--out', str(out))
  assert read(out) == rows
  assert '0 cells to measure, 4 already in' in again
  assert 'every cell was already measured' in again
  assert 'SiLa/plain step time:' in again  # The table, from the file.


@pytest.mark.slow
def test_a_spent_budget_measures_nothing_and_says_so(tmp_path):
  out = tmp_path / 'batched.jsonl'
  printed = batched('--quick', '--budget_s', '0', '--out', str(out))
  assert not out.exists() or read(out) == []
  assert 'measured 0 cells' in printed and '4 skipped for the budget' in printed
  assert 'skipped R=1 plain sliced' in printed


def test_cells_measure_one_run_then_the_largest_in_every_form_then_the_rest():
  order = batched_runs.cells([1, 4, 32], ('plain', 'sila'), ('sliced', 'grouped'))
  assert order[:6] == [(1, 'plain', 'sliced'), (1, 'sila', 'sliced'), (32, 'plain', 'sliced'),
                       (32, 'sila', 'sliced'), (32, 'plain', 'grouped'),
                       (32, 'sila', 'grouped')]
  assert order[6:] == [(4, 'plain', 'sliced'), (4, 'sila', 'sliced'), (4, 'plain', 'grouped'),
                       (4, 'sila', 'grouped'), (1, 'plain', 'grouped'), (1, 'sila', 'grouped')]


def test_a_cell_costs_what_the_measured_ones_say():
  def row(num_runs, peer_conv, step_ms, wall_s):
    return {'num_runs': num_runs, 'peer_conv': peer_conv, 'step_ms': step_ms, 'wall_s': wall_s,
            'steps': 10}
  assert batched_runs.estimate_s(8, 'grouped', [], 10) == 0  # Nothing measured yet.
  one = row(1, 'sliced', 100, 13)  # 3 s of steps, 10 s of compilation and set-up.
  assert abs(batched_runs.estimate_s(1, 'grouped', [one], 10) - 13) < 1e-9  # R = 1: any form.
  # Above: the same fixed cost, the step time at most R times one run's.
  assert abs(batched_runs.estimate_s(4, 'grouped', [one], 10) - (10 + 12)) < 1e-9
  four = row(4, 'sliced', 200, 26)  # 6 s of steps, 20 s fixed.
  # Between two: linear in R; above both: the fixed cost follows their line.
  assert abs(batched_runs.estimate_s(2, 'sliced', [one, four], 10)
             - (10 + 10 / 3 + 3 * (100 + 100 / 3) / 100)) < 1e-9
  assert abs(batched_runs.estimate_s(7, 'sliced', [one, four], 10)
             - (30 + 3 * 350 / 100)) < 1e-9
  assert abs(batched_runs.estimate_s(4, 'grouped', [one, four], 10) - 22) < 1e-9  # Form apart.
