"""The metrics writer: metrics.jsonl with typed records, TensorBoard events, the log line."""
import glob
import os

import pytest

from sila_jax.training import metrics
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


@pytest.mark.parametrize('written, parsed', [
    ('loss', metrics.Name('loss')),
    ('peer_1/accuracy', metrics.Name('accuracy', peer=1)),
    ('ensemble/loss', metrics.Name('loss', ensemble=True)),
    ('run_2/loss_main', metrics.Name('loss_main', run=2)),
    ('run_2/peer_0/loss', metrics.Name('loss', run=2, peer=0)),
    ('run_0/ensemble/accuracy', metrics.Name('accuracy', run=0, ensemble=True)),
    ('peer_x/loss', metrics.Name('peer_x/loss')),  # Not a peer's: a name of its own.
])
def test_names_are_built_and_parsed_by_one_pair_of_functions(written, parsed):
  assert metrics.parse(written) == parsed
  assert metrics.name(parsed.metric, run=parsed.run, peer=parsed.peer,
                      ensemble=parsed.ensemble) == str(parsed) == written
  assert parsed.prefix == written[:-len(parsed.metric)].rstrip('/')


def test_names_a_run_gives_flattened_names_parse_whole():
  assert metrics.name('peer_1/loss', run=2) == 'run_2/peer_1/loss'
  assert metrics.parse('run_2/peer_1/loss') == metrics.Name('loss', run=2, peer=1)
  with pytest.raises(ValueError, match='ensemble is no one peer'):
    metrics.name('loss', peer=1, ensemble=True)
  with pytest.raises(ValueError, match="Not a metric name: ''"):
    metrics.parse('')


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
  path = str(tmp_path / 'table.md')
  metrics.write_atomically(path, 'old')
  metrics.write_atomically(path, 'new\n')
  assert open(path).read() == 'new\n' and os.listdir(tmp_path) == ['table.md']
