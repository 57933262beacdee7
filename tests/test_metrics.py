"""The metrics writer: metrics.jsonl with typed records, TensorBoard events, the log line."""
import glob
import os

import numpy as np
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
    ('branch_2/accuracy', metrics.Name('accuracy', branch=2)),
    ('run_1/peer_0/branch_ensemble/loss',
     metrics.Name('loss', run=1, peer=0, branch_ensemble=True)),
    ('peer_x/loss', metrics.Name('peer_x/loss')),  # Not a peer's: a name of its own.
])
def test_names_are_built_and_parsed_by_one_pair_of_functions(written, parsed):
  assert metrics.parse(written) == parsed
  assert metrics.name(parsed.metric, run=parsed.run, peer=parsed.peer, ensemble=parsed.ensemble,
                      branch=parsed.branch, branch_ensemble=parsed.branch_ensemble
                      ) == str(parsed) == written
  assert parsed.prefix == written[:-len(parsed.metric)].rstrip('/')


def test_names_a_run_gives_flattened_names_parse_whole():
  assert metrics.name('peer_1/loss', run=2) == 'run_2/peer_1/loss'
  assert metrics.parse('run_2/peer_1/loss') == metrics.Name('loss', run=2, peer=1)
  with pytest.raises(ValueError, match='ensemble is no one peer'):
    metrics.name('loss', peer=1, ensemble=True)
  with pytest.raises(ValueError, match="Not a metric name: ''"):
    metrics.parse('')
  with pytest.raises(ValueError, match='ensemble has no branches'):
    metrics.name('loss', ensemble=True, branch=1)


def test_flatten_names_every_peer_and_branch():
  tree = {'count': np.array([4, 4]),  # Two runs, K = 2 peers, m = 3 branches.
          metrics.PEERS: {'loss': np.arange(4).reshape(2, 2)},
          metrics.BRANCHES: {'loss': np.arange(12).reshape(2, 2, 3)},
          metrics.BRANCH_ENSEMBLE: {'loss': np.arange(4).reshape(2, 2) + 10}}
  flat = metrics.flatten(tree)
  assert sorted(flat) == sorted(['count', 'peer_0/loss', 'peer_1/loss', *(
      f'peer_{i}/branch_{j}/loss' for i in range(2) for j in range(3)),
      'peer_0/branch_ensemble/loss', 'peer_1/branch_ensemble/loss'])
  np.testing.assert_array_equal(flat['peer_1/branch_2/loss'], [5, 11])
  np.testing.assert_array_equal(flat['peer_0/branch_ensemble/loss'], [10, 12])
  one_peer = metrics.flatten({metrics.BRANCHES: {'loss': np.arange(6).reshape(2, 1, 3)}})
  assert sorted(one_peer) == ['branch_0/loss', 'branch_1/loss', 'branch_2/loss']


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
  path = str(tmp_path / 'table.md')
  metrics.write_atomically(path, 'old')
  metrics.write_atomically(path, 'new\n')
  assert open(path).read() == 'new\n' and os.listdir(tmp_path) == ['table.md']
