"""Ctrl-C: the first finishes the step, saves and stops (status 130); a second stops at once.

The processes are real train.py runs on 2 fake CPU devices (tests/helpers.py's launch).
"""
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import cli_overrides, launch, logged_steps, saved_steps


def interrupt(tmp_path, data_dir, presses):
  """Starts a long run, presses Ctrl-C `presses` times once it has logged step 3; returns
  (process, stdout, log, last step logged, checkpointed steps)."""
  workdir = str(tmp_path / 'run')
  log_path = tmp_path / 'log'
  process = launch('train.py', workdir, cli_overrides(data_dir, num_train_steps=10_000,
                                                      checkpoint_every_steps=10_000), log_path)
  deadline = time.time() + 300
  while max(logged_steps(workdir), default=-1) < 3:
    assert process.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
    time.sleep(0.005)
  for _ in range(presses):
    process.send_signal(signal.SIGINT)
    time.sleep(0.1)  # Two signals sent together arrive as one.
  stdout, _ = process.communicate(timeout=300)
  return process, stdout, open(log_path).read(), max(logged_steps(workdir)), saved_steps(workdir)


@pytest.mark.slow
def test_first_ctrl_c_saves_the_step_and_says_how_to_resume(data_dir, tmp_path):
  process, stdout, log, reached, saved = interrupt(tmp_path, data_dir, presses=1)
  assert process.returncode == 130, log[-3000:]
  assert saved == [reached]  # Nothing lost since the last step.
  assert f'stopped by Ctrl-C after saving step {reached}; run the same command to resume' in stdout
  assert f'Ctrl-C: saved a checkpoint at step {reached}' in log
  assert 'Traceback' not in log


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_in_one_line(data_dir, tmp_path):
  process, _, log, _, _ = interrupt(tmp_path, data_dir, presses=2)
  assert process.returncode == 130, log[-3000:]
  # The last line is the command's own; no traceback of it before (orbax may log its own
  # when the second press cuts the wait for a checkpoint being written).
  assert log.rstrip().splitlines()[-1].startswith('train.py: stopped by Ctrl-C; ')
  assert 'sila_jax/training/train.py' not in log


@pytest.mark.parametrize('where', [
    'raise KeyboardInterrupt',
    # A second press while the command exits, landing in an object's finalizer: Python would
    # report it as "Exception ignored in ..." with a traceback and go on.
    'Finalized()',
])
def test_ctrl_c_outside_training_is_one_line_and_status_130(tmp_path, where):
  program = ('from sila_jax.commands import cli\n'
             'class Finalized:\n'
             '  def __del__(self):\n'
             '    raise KeyboardInterrupt\n'
             'def main(argv):\n'
             f'  {where}\n'
             '  print("after")\n'
             'cli.run_command(main)\n')
  done = subprocess.run([sys.executable, '-c', program], capture_output=True, text=True)
  assert done.returncode == 130
  assert done.stderr.strip().splitlines() == [
      '-c: stopped by Ctrl-C; files it writes appear whole or not at all, and the checkpoints '
      'saved so far are intact.']
  assert done.stdout == ''
