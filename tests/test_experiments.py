"""The experiment runner on the smoke grid: plans, batches, skips, resumes and summarises."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sila_jax.configs.grids import smoke
from sila_jax import experiments
from sila_jax.errors import ConfigError
from tests.test_faults import ROOT

ENV = {**os.environ, 'XLA_FLAGS': ''}  # One CPU device, like one GPU.


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
  assert {r['group_runs'] for r in rows} == {'2'}
  with open(os.path.join(out, 'summary.csv')) as f:
    summary = {r['arm']: r for r in csv.DictReader(f)}
  plain = [float(r['val_accuracy']) for r in rows if r['arm'] == 'plain']
  assert float(summary['plain']['val_accuracy_mean']) == pytest.approx(sum(plain) / 2)
  assert summary['plain']['n'] == '2' and 'vs_plain_mean' in summary['sila_joint']
  markdown = open(os.path.join(out, 'summary.md')).read()
  assert '| sila_joint | 2 |' in markdown and '24 steps of batch 32' in markdown
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


def test_command_line_reports_a_bad_override_in_one_line(tmp_path):
  process = subprocess.run(runner(str(tmp_path / 'out'), str(tmp_path), '--config.sila.wieght=2'),
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert process.returncode != 0
  assert process.stderr.strip().splitlines()[-1].endswith(
      "Unknown config field 'sila.wieght'; did you mean 'sila.weight'?")
  assert not os.path.exists(tmp_path / 'out')


def test_device_grid_quick_lists_every_grid_and_trains_the_smoke_grid(tmp_path):
  env = {**ENV, 'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
  env.pop('OUT', None)
  process = subprocess.run(['bash', 'experiments/device_grid.sh', '--quick', '--out_dir',
                            str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
  assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
  log = (tmp_path / 'log.txt').read_text()
  assert '27 runs planned, 0 finished; 27 to train as 4 computation(s).' in log  # ablation
  assert '9 runs planned, 0 finished; 9 to train as 2 computation(s).' in log  # compression
  assert '18 runs planned, 0 finished; 18 to train as 3 computation(s).' in log  # compare
  assert 'stopped' not in log
  [batched] = [json.loads(line) for line in open(tmp_path / 'batched_runs.jsonl')]
  assert batched['num_runs'] == 4 and batched['speedup'] > 0
  with open(tmp_path / 'smoke' / 'runs.csv') as f:
    assert len(list(csv.DictReader(f))) == 4
  assert not (tmp_path / 'smoke' / 'work').exists()
  with open(tmp_path / 'smoke' / 'runs' / 'plain' / 'seed_0.json') as f:
    assert json.load(f)['step'] == 4
