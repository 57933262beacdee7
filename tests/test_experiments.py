"""The experiment runner on the smoke grid: plans, batches, skips, resumes, exports and
summarises."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from sila_jax.configs.grids import smoke
from sila_jax import evaluate
from sila_jax import experiments
from sila_jax import export
from sila_jax.errors import ConfigError
from tests.helpers import ROOT, xla_flags

ENV = {**os.environ, 'XLA_FLAGS': xla_flags()}  # One CPU device, like one GPU.


def runner(out, data_dir, *extra):
  return [sys.executable, '-m', 'sila_jax.experiments', '--grid=configs/grids/smoke.py',
          f'--out={out}', f'--config.data_dir={data_dir}', '--config.train_split=train',
          '--config.eval_split=train', *extra]


def results(out):
  """{run json path: modification time} of the finished runs under `out`."""
  found = {}
  for folder, _, files in os.walk(os.path.join(out, 'runs')):
    for name in files:
      found[os.path.join(folder, name)] = os.stat(os.path.join(folder, name)).st_mtime_ns
  return found


@pytest.mark.slow
def test_smoke_grid_runs_resumes_after_a_kill_and_skips_finished_runs(ten_class_folder,
                                                                      tmp_path):
  out = str(tmp_path / 'smoke')
  listed = subprocess.run(runner(out, ten_class_folder, '--dry_run'), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert listed.returncode == 0, listed.stderr[-2000:]
  assert '4 runs planned, 0 finished; 4 to train as 2 computation(s).' in listed.stdout
  assert '2 together: plain/seed 0, plain/seed 1' in listed.stdout
  assert not os.path.exists(out)  # A dry run writes nothing.

  # Killed once the first computation's runs are saved (the second may have begun).
  process = subprocess.Popen(runner(out, ten_class_folder), cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while len(results(out)) < 2 and process.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  first = results(out)
  assert len(first) == 2

  again = subprocess.run(runner(out, ten_class_folder), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert '4 runs planned, 2 finished; 2 to train as 1 computation(s).' in again.stdout
  done = results(out)
  assert len(done) == 4 and all(done[path] == mtime for path, mtime in first.items())

  with open(os.path.join(out, 'runs.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [(r['arm'], r['seed']) for r in rows] == [
      ('plain', '0'), ('plain', '1'), ('sila_joint', '0'), ('sila_joint', '1')]
  assert all(r['step'] == '24' and 0 <= float(r['val_accuracy']) <= 1 for r in rows)
  assert {r['group_runs'] for r in rows} == {'2'} and {r['diverged_step'] for r in rows} == {''}
  with open(os.path.join(out, 'summary.csv')) as f:
    summary = {r['arm']: r for r in csv.DictReader(f)}
  plain = [float(r['val_accuracy']) for r in rows if r['arm'] == 'plain']
  assert float(summary['plain']['val_accuracy_mean']) == pytest.approx(sum(plain) / 2)
  assert summary['plain']['n'] == '2' and summary['plain']['diverged'] == '0'
  joint = summary['sila_joint']
  assert joint['vs_plain_n'] == '2'
  markdown = open(os.path.join(out, 'summary.md')).read()
  assert '| sila_joint | 2 |' in markdown and '24 steps of batch 32' in markdown
  # The Δ cell is summary.csv's paired mean and 95 % interval, in percent points.
  cell = (f"{100 * float(joint['vs_plain_mean']):.2f} [{100 * float(joint['vs_plain_ci_low']):.2f},"
          f" {100 * float(joint['vs_plain_ci_high']):.2f}] |")
  assert cell in markdown and 'Effects (95 % interval excludes 0):' in markdown
  for image in ('accuracy.png', 'curves.png'):
    with open(os.path.join(out, image), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  # --summarize rewrites the summaries from the finished runs alone.
  os.remove(os.path.join(out, 'summary.md'))
  subprocess.run(runner(out, ten_class_folder, '--summarize'), cwd=ROOT, env=ENV, check=True,
                 capture_output=True, timeout=300)
  assert open(os.path.join(out, 'summary.md')).read() == markdown

  # Rerun: nothing to train, nothing rewritten.
  rerun = subprocess.run(runner(out, ten_class_folder), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
  assert '4 runs planned, 4 finished; 0 to train' in rerun.stdout
  assert results(out) == done


def test_runs_differing_only_in_run_fields_share_a_computation():
  grid = smoke.get_grid()
  grid['arms'] = {'plain': {'sila.weight': 0.0}, 'kl': {'sila.kl_weight': 1.0},
                  'scaled': {'loss_scale': 2.0}, 'joint': {'sila.variant': 'joint'}}
  planned = experiments.plan(grid, {'num_train_steps': 5})
  groups = experiments.group(planned, max_runs=4)
  assert [[(r.arm, r.seed) for r in g] for g in groups] == [
      [('plain', 0), ('plain', 1), ('kl', 0), ('kl', 1)], [('scaled', 0), ('scaled', 1)],
      [('joint', 0), ('joint', 1)]]
  config = experiments.group_config(groups[0])
  assert config.num_runs == 4 and config.num_train_steps == 5
  assert config.runs.seed == (0, 1, 0, 1)
  assert config.runs.sila_weight == (0.0, 0.0, 1.0, 1.0)
  assert config.runs.sila_kl_weight == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize('overrides, message', [
    ({'sila.wieght': 1.0}, "Unknown config field 'sila.wieght'; did you mean 'sila.weight'"),
    ({'num_runs': 2}, 'The runner sets num_runs itself'),
    ({'runs.seed': (0, 1)}, 'The runner sets runs.seed itself'),
    ({'eval_every_steps': 0}, 'never validates'),
])
def test_bad_grids_and_overrides_are_one_line_errors(overrides, message):
  with pytest.raises(ConfigError, match=message):
    experiments.plan(smoke.get_grid(), overrides)


@pytest.mark.slow
def test_command_line_reports_a_bad_override_in_one_line(tmp_path):
  process = subprocess.run(runner(str(tmp_path / 'out'), str(tmp_path), '--config.sila.wieght=2'),
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert process.returncode != 0
  assert process.stderr.strip().splitlines()[-1].endswith(
      "Unknown config field 'sila.wieght'; did you mean 'sila.weight'?")
  assert not os.path.exists(tmp_path / 'out')


def record(arm, seed, accuracy, diverged_step=None):
  """A finished run's result as train_group saves it, with made-up numbers."""
  return {'arm': arm, 'seed': seed, 'step': 10, 'diverged_step': diverged_step,
          'val_accuracy': accuracy, 'val_loss': 1.0, 'train_loss_main': 2.0,
          'history': {'train_loss_main': [[5, 2.5], [10, 2.0]],
                      'val_accuracy': [[10, accuracy]]}}


def records_of(deltas_by_arm, base=(0.5, 0.6, 0.7, 0.4, 0.3)):
  """Records of arm 'plain' at accuracies `base` and of each other arm at base + its deltas,
  seed by seed."""
  made = [record('plain', s, a) for s, a in enumerate(base)]
  for arm, deltas in deltas_by_arm.items():
    made += [record(arm, s, a + d) for s, (a, d) in enumerate(zip(base, deltas))]
  return made


def grid_of(arms, seeds):
  return {'arms': dict.fromkeys(arms, {}), 'seeds': seeds, 'baselines': ('plain',)}


def test_the_paired_difference_gets_its_t_interval_and_no_effect_is_claimed_inside_it():
  grid = grid_of(('plain', 'twin'), (0, 1, 2))
  rows = experiments.summarize(grid, records_of({'twin': (-0.01, -0.03, -0.02)}, (0.5, 0.6, 0.7)))
  twin = rows[1]
  # Deltas -1, -3, -2 points: mean -2, sample std 1, n 3; t_{0.975, 2} = 4.3027.
  half = 4.3027 * 0.01 / math.sqrt(3)
  assert twin['n'] == 3 and twin['diverged'] == 0 and twin['vs_plain_n'] == 3
  assert twin['vs_plain_mean'] == pytest.approx(-0.02)
  assert twin['vs_plain_std'] == pytest.approx(0.01)
  assert twin['vs_plain_ci_low'] == pytest.approx(-0.02 - half, rel=1e-4)
  assert twin['vs_plain_ci_high'] == pytest.approx(-0.02 + half, rel=1e-4)
  assert twin['val_accuracy_mean'] == pytest.approx(0.58)
  assert twin['val_accuracy_std'] == pytest.approx(0.095394, rel=1e-4)  # Of 49, 57, 68 %.
  assert not any(k.startswith('vs_') for k in rows[0])  # The baseline against itself.
  text = experiments.markdown(grid, rows, 'Caption.')
  assert '| twin | 3 | 58.00 ± 9.54 | 1.0000 | 2.0000 | -2.00 [-4.48, 0.48] |' in text
  assert '95 % t-interval in brackets' in text and 'diverged' not in text
  assert text.rstrip().endswith('Effects (95 % interval excludes 0):\n- none: no paired '
                                'difference is distinguishable from zero at n = 3')


def test_an_effect_is_called_only_where_its_interval_excludes_zero():
  grid = grid_of(('plain', 'behind', 'ahead', 'unclear'), (0, 1, 2, 3, 4))
  rows = experiments.summarize(grid, records_of({
      'behind': (-0.01, -0.03, -0.02, -0.02, -0.02), 'ahead': (0.01, 0.03, 0.02, 0.02, 0.02),
      'unclear': (0.05, -0.05, 0.01, -0.01, 0.0)}))
  # Deltas of std 0.7071 points over n = 5: t_{0.975, 4} = 2.7764 gives 2.00 ± 0.88.
  effects = experiments.effects(grid, rows)
  assert effects == ['- behind is behind plain by 2.00 points [1.12, 2.88], n = 5',
                     '- ahead is ahead of plain by 2.00 points [1.12, 2.88], n = 5']
  text = experiments.markdown(grid, rows, 'Caption.')
  assert '| -2.00 [-2.88, -1.12] |' in text and '\n'.join(effects) in text


def test_diverged_runs_leave_n_and_the_means_and_are_counted():
  grid = grid_of(('plain', 'twin', 'lone'), (0, 1, 2))
  made = records_of({'twin': (-0.01, -0.03, -0.02)}, (0.5, 0.6, 0.7))
  made[4] = record('twin', 1, float('nan'), diverged_step=7)  # Its accuracy is not a number.
  made.append(record('lone', 2, 0.75))
  rows = {row['arm']: row for row in experiments.summarize(grid, made)}
  assert (rows['plain']['n'], rows['plain']['diverged']) == (3, 0)
  assert (rows['twin']['n'], rows['twin']['diverged']) == (2, 1)
  assert rows['twin']['val_accuracy_mean'] == pytest.approx((0.49 + 0.68) / 2)
  assert rows['twin']['vs_plain_n'] == 2
  assert rows['twin']['vs_plain_mean'] == pytest.approx(-0.015)
  assert rows['lone']['vs_plain_n'] == 1 and math.isnan(rows['lone']['vs_plain_ci_low'])
  text = experiments.markdown(grid, list(rows.values()), 'Caption.')
  assert '| arm | n | diverged | val accuracy % |' in text
  assert '| twin | 2 | 1 | 58.50 ± 13.44 |' in text
  assert '| lone | 1 | 0 | 75.00 ± nan | 1.0000 | 2.0000 | 5.00 |' in text  # No interval.
  assert 'left out of n and of every mean' in text
  assert 'zero at n = 1, 2' in text


def test_summaries_of_saved_runs_carry_intervals_and_divergence(tmp_path):
  grid = smoke.get_grid()
  grid['seeds'] = (0, 1, 2)
  planned = experiments.plan(grid, {})
  accuracies = {('plain', 0): 0.5, ('plain', 1): 0.6, ('plain', 2): 0.7,
                ('sila_joint', 0): 0.52, ('sila_joint', 1): 0.63, ('sila_joint', 2): 0.1}
  for run in planned:
    saved = {**record(run.arm, run.seed, accuracies[run.arm, run.seed],
                      7 if run.seed == 2 and run.arm == 'sila_joint' else None),
             'config': run.digest}
    os.makedirs(tmp_path / 'runs' / run.arm, exist_ok=True)
    with open(tmp_path / run.result_path, 'w') as f:
      json.dump(saved, f)
  rows = experiments.write_summaries(grid, planned, str(tmp_path), 'the command', 'Title.')
  assert [row['n'] for row in rows] == [3, 2]
  with open(tmp_path / 'summary.csv') as f:
    joint = list(csv.DictReader(f))[1]
  assert joint['diverged'] == '1' and joint['vs_plain_n'] == '2'
  assert float(joint['vs_plain_mean']) == pytest.approx(0.025)
  assert float(joint['vs_plain_ci_low']) < 0.025 < float(joint['vs_plain_ci_high'])
  with open(tmp_path / 'runs.csv') as f:
    assert [r['diverged_step'] for r in csv.DictReader(f)] == ['', '', '', '', '', '7']
  with open(tmp_path / 'accuracy.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('export_seeds', [(5,), 0, (True,)])
def test_export_seeds_must_be_seeds_of_the_grid(export_seeds):
  grid = {**smoke.get_grid(), 'export_seeds': export_seeds}
  with pytest.raises(ConfigError, match=r'^grid\.py: export_seeds must list seeds of the grid '
                     r'\(0, 1\); got'):
    experiments.check_grid(grid, 'grid.py')
  assert experiments.check_grid({**grid, 'export_seeds': (1,)}, 'grid.py')


@pytest.mark.slow
def test_train_group_exports_the_chosen_seeds(ten_class_folder, tmp_path):
  planned = experiments.plan(smoke.get_grid(), {
      'data_dir': ten_class_folder, 'train_split': 'train', 'eval_split': 'train',
      'num_train_steps': 2, 'log_every_steps': 2, 'eval_every_steps': 2,
      'checkpoint_every_steps': 2, 'eval_batch_size': 40})  # 40: divides by the 8 devices.
  members = experiments.group(planned, max_runs=2)[0]
  assert [(r.arm, r.seed) for r in members] == [('plain', 0), ('plain', 1)]
  out = str(tmp_path)
  assert experiments.train_group(members, out, export_seeds=(1,)) is None  # Not stopped.
  assert not os.path.exists(experiments.export_dir(out, members[0]))
  export_dir = experiments.export_dir(out, members[1])
  assert export_dir == os.path.join(out, 'exports', 'plain', 'seed_1')
  assert export.load_export(export_dir).step == 2
  saved = experiments.finished(members[1], out)
  assert saved['diverged_step'] is None
  # The export is run 1 of the computation: it evaluates to that run's validation loss.
  evaluated = evaluate.evaluate_export(members[1].config, export_dir)
  assert evaluated['loss'] == pytest.approx(saved['val_loss'], rel=1e-5)
  assert evaluated['loss'] != pytest.approx(experiments.finished(members[0], out)['val_loss'],
                                            rel=1e-5)
