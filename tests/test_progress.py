"""Progress: a live bar with ETA on a terminal, log lines elsewhere; a real run under a pty."""
import io
import logging
import os
import pty
import subprocess
import sys

import pytest

from sila_jax.training import progress
from tests.helpers import ROOT, make_folder, xla_flags


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_a_terminal_gets_a_redrawn_bar_with_eta_and_figures():
  screen = Terminal()
  with progress.Progress('train', 4, initial=1, stream=screen) as bar:
    bar.set(epoch=0.5, loss=2.3456789)
    for _ in range(3):
      bar.update()
    bar.write('validation  accuracy 0.5')
  shown = screen.getvalue()
  assert '\r' in shown and 'ETA' in shown and '|' in shown
  assert '4/4' in shown and 'loss=2.346' in shown and 'epoch=0.5' in shown
  assert 'train 4/4 | validation  accuracy 0.5\n' in shown


def test_elsewhere_every_message_is_a_log_line_with_the_count_and_eta(caplog):
  caplog.set_level(logging.INFO)
  stream = io.StringIO()  # Not a terminal: nothing is drawn into it.
  with progress.Progress('train', 4, stream=stream, every_secs=3600) as bar:
    bar.update()
    bar.update()  # The ETA counts the steps after the first.
    bar.write('train  loss 1.5')
    bar.update()
  assert stream.getvalue() == ''
  assert len(caplog.messages) == 1
  assert caplog.messages[0].startswith('train 2/4 (50%) elapsed 00:00, ETA 00:0')
  assert caplog.messages[0].endswith(' | train  loss 1.5')


def test_elsewhere_silence_longer_than_every_secs_logs_the_count(caplog):
  caplog.set_level(logging.INFO)
  with progress.Progress('eval', 3, unit='batch', stream=io.StringIO(), every_secs=0) as bar:
    for _ in range(3):
      bar.update()
  assert [m.split(' elapsed')[0] for m in caplog.messages] == [
      'eval 1/3 (33%)', 'eval 2/3 (67%)', 'eval 3/3 (100%)']


@pytest.mark.slow
def test_training_under_a_pseudo_terminal_shows_the_bar(tmp_path):
  data_dir = make_folder(tmp_path / 'data', per_class=6)
  command = [sys.executable, 'train.py', '--config=configs/cifar10_folder.py',
             f'--workdir={tmp_path / "run"}', f'--config.data_dir={data_dir}',
             '--config.num_classes=3', '--config.train_split=train[:-2]',
             '--config.eval_split=train[-2:]', '--config.width=0.25', '--config.batch_size=8',
             '--config.eval_batch_size=8', '--config.num_epochs=4', '--config.log_every_steps=2']
  controller, terminal = pty.openpty()
  # No window size, as under `script -qc`: the bar falls back to 100 columns.
  process = subprocess.Popen(command, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal,
                             env={**os.environ, 'XLA_FLAGS': xla_flags()})
  os.close(terminal)
  shown = b''
  while True:
    try:
      chunk = os.read(controller, 65536)
    except OSError:  # The child closed the terminal.
      break
    if not chunk:
      break
    shown += chunk
  assert process.wait(timeout=600) == 0, shown.decode(errors='replace')[-3000:]
  shown = shown.decode(errors='replace')
  assert '\r' in shown and 'ETA' in shown
  assert 'train 100%|' in shown and '4/4' in shown and 'loss=' in shown
  assert 'train 2/4 | validation  accuracy' in shown  # Written above the bar.
