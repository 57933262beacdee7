"""The metrics writer: metrics.jsonl with typed records, TensorBoard events, the log line."""
import glob
import os

import pytest

from sila_jax import metrics
from tests.helpers import assert_same_scalars, tensorboard_scalars


def test_records_say_their_type_and_reach_every_sink(tmp_path):
  workdir, lines = str(tmp_path), []
  writer = metrics.Writer(workdir, lines.append)
  writer.write(metrics.TRAIN, 10, {'loss': 2.5, 'run_0/loss': 2.0, 'run_1/loss': 3.0})
  writer.write(metrics.VALIDATION, 10, {'accuracy': 0.25, 'loss': 2.25})
  writer.write(metrics.TRAIN, 20, {'loss': 1.5, 'run_0/loss': 1.25, 'run_1/loss': 1.75})
  writer.close()
  assert metrics.read(workdir) == [
      {'type': 'train', 'step': 10, 'loss': 2.5, 'run_0/loss': 2.0, 'run_1/loss': 3.0},
      {'type': 'validation', 'step': 10, 'accuracy': 0.25, 'loss': 2.25},
      {'type': 'train', 'step': 20, 'loss': 1.5, 'run_0/loss': 1.25, 'run_1/loss': 1.75}]
  assert [r['step'] for r in metrics.read(workdir, metrics.VALIDATION)] == [10]
  assert metrics.last(workdir, metrics.TRAIN) == {'loss': 1.5, 'run_0/loss': 1.25,
                                                  'run_1/loss': 1.75}
  assert lines == ['train  loss 2.5', 'validation  accuracy 0.25  loss 2.25', 'train  loss 1.5']
  assert len(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))) == 1
  assert_same_scalars(workdir)


def test_a_resumed_run_forgets_the_records_it_redoes(tmp_path):
  workdir = str(tmp_path)
  first = metrics.Writer(workdir, lambda line: None)
  for step in (1, 2, 3, 4):
    first.write(metrics.TRAIN, step, {'loss': float(step)})
  first.close()
  resumed = metrics.Writer(workdir, lambda line: None, start_step=2)  # Checkpoint at 2.
  for step in (3, 4):
    resumed.write(metrics.TRAIN, step, {'loss': 10.0 * step})
  resumed.close()
  assert [(r['step'], r['loss']) for r in metrics.read(workdir)] == [
      (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
  assert tensorboard_scalars(workdir)['train/loss'] == [(1, 1.0), (2, 2.0), (3, 30.0),
                                                        (4, 40.0)]


def test_an_unknown_record_type_is_refused(tmp_path):
  with pytest.raises(ValueError, match="Unknown record type 'test'"):
    metrics.Writer(str(tmp_path), print).write('test', 1, {'loss': 1.0})
  assert not os.path.exists(os.path.join(tmp_path, metrics.FILE))


def test_no_records_read_as_nothing(tmp_path):
  assert metrics.read(str(tmp_path)) == [] and metrics.last(str(tmp_path), metrics.TRAIN) == {}
