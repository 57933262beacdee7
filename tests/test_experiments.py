"""`python -m sila_jax.experiments` on the smoke grid: lists, trains, is killed, resumes,
skips finished runs and summarises; a bad override is one line. Each module of the package
has its own tests (tests/test_experiments_<module>.py)."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest

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


@pytest.mark.slow
def test_command_line_reports_a_bad_override_in_one_line(tmp_path):
  process = subprocess.run(runner(str(tmp_path / 'out'), str(tmp_path), '--config.sila.wieght=2'),
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert process.returncode != 0
  assert process.stderr.strip().splitlines()[-1].endswith(
      "Unknown config field 'sila.wieght'; did you mean 'sila.weight'?")
  assert not os.path.exists(tmp_path / 'out')


def test_a_dry_run_lists_the_plan_and_a_mistake_names_the_command(tmp_path):
  listed = subprocess.run(runner(str(tmp_path / 'out'), str(tmp_path), '--dry_run',
                                 '--max_runs=1', '--config.num_train_steps=3'),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert listed.returncode == 0, listed.stderr[-2000:]
  assert '4 runs planned, 0 finished; 4 to train as 4 computation(s).' in listed.stdout
  missing = subprocess.run([sys.executable, '-m', 'sila_jax.experiments', '--grid=nonesuch.py',
                            f'--out={tmp_path}'], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1] == (
      'python -m sila_jax.experiments: error: No grid file nonesuch.py.')
