"""Faults: killed and preempted processes, corrupt checkpoints, NaN, reruns, bad input.

The process tests run train.py / eval.py as real subprocesses on 2 fake CPU devices.
"""
import logging
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

from sila_jax import methods
from sila_jax.errors import CheckpointError, NonFiniteLossError
from sila_jax.evaluation import evaluate
from sila_jax.training import checkpoint
from sila_jax.training import metrics
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import runs
from sila_jax.training import train
from sila_jax.training import train_step as train_step_lib
from tests.helpers import (cli_overrides, largest_file, launch, logged_steps, make_folder,
                           make_tiny_config, saved_state, saved_steps)


@pytest.mark.slow
def test_killed_and_preempted_run_ends_bit_for_bit_like_an_uninterrupted_one(data_dir, tmp_path):
  overrides = cli_overrides(data_dir, num_train_steps=30, checkpoint_every_steps=4,
                            eval_every_steps=10, keep_checkpoints=2)
  reference_dir = str(tmp_path / 'reference')
  reference = launch('train.py', reference_dir, overrides, tmp_path / 'reference.log')

  workdir = str(tmp_path / 'faulty')
  # (signal, send it once training has logged this step; None: during start-up).
  faults = [(signal.SIGKILL, None), (signal.SIGKILL, 6), (signal.SIGTERM, 13),
            (signal.SIGKILL, 21), (signal.SIGTERM, 26)]
  table = []
  for attempt, (sig, at_step) in enumerate(faults):
    log_path = tmp_path / f'attempt{attempt}.log'
    process = launch('train.py', workdir, overrides, log_path)
    deadline = time.time() + 300
    if at_step is None:
      time.sleep(2.0)
    else:
      # One read per check: a restarted run may rewrite the file between two.
      while max(logged_steps(workdir), default=-1) < at_step:
        assert process.poll() is None, open(log_path).read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.005)
    process.send_signal(sig)
    stdout, _ = process.communicate(timeout=300)
    reached = max(logged_steps(workdir), default=0)
    kept = max(saved_steps(workdir), default=0)
    table.append((sig.name, at_step, reached, kept))
    if sig == signal.SIGKILL:
      assert process.returncode == -signal.SIGKILL
      assert kept % 4 == 0 and kept <= reached  # Lost: the steps since the last complete write.
    else:
      assert process.returncode == 0, open(log_path).read()[-3000:]
      assert f'stopped by SIGTERM after saving step {kept}' in stdout
      assert kept == reached  # Preemption loses nothing.

  final = launch('train.py', workdir, overrides, tmp_path / 'final.log')
  assert final.wait(timeout=300) == 0, open(tmp_path / 'final.log').read()[-3000:]
  assert f'Resuming at step {table[-1][3]}' in open(tmp_path / 'final.log').read()
  assert reference.wait(timeout=300) == 0, open(tmp_path / 'reference.log').read()[-3000:]
  print('\nfault, sent at logged step, last logged step, checkpoint resumed from:', *table,
        sep='\n')

  expected, got = saved_state(reference_dir, 30), saved_state(workdir, 30)
  assert expected.keys() == got.keys()
  for path in expected:  # Parameters, BatchNorm statistics, optimizer state, step, RNG.
    np.testing.assert_array_equal(got[path], expected[path], err_msg=path)
  assert logged_steps(workdir) == list(range(1, 31))  # Lost steps were redone once each.
  assert [r['step'] for r in metrics.read(workdir, metrics.VALIDATION)] == [10, 20, 30]
  drop_speed = lambda r: {k: v for k, v in r.items() if k not in train.TIMINGS}
  assert ([drop_speed(r) for r in metrics.read(workdir)]
          == [drop_speed(r) for r in metrics.read(reference_dir)])


def three_class_config(data_dir):
  """helpers.make_tiny_config on the 3-class data_dir: 48 training, 12 validation images."""
  config = make_tiny_config(data_dir)
  config.update(num_classes=3, train_split='train[:-4]', eval_split='train[-4:]')
  return config


@pytest.fixture
def folder_config(data_dir):
  return three_class_config(data_dir)


# The tests that read `finished_run` run on one xdist worker, which trains it once.
READS_FINISHED_RUN = pytest.mark.xdist_group('test_faults.finished_run')


@pytest.fixture(scope='module')
def finished_run(data_dir, tmp_path_factory):
  """(config, workdir, result) of a finished 3-step run of folder_config; the tests copy the
  workdir before they touch it."""
  config = three_class_config(data_dir)
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  return config, workdir, train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_corrupt_checkpoints_are_set_aside_and_training_resumes_from_a_good_one(
    folder_config, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  folder_config.update(num_train_steps=8, checkpoint_every_steps=2, keep_checkpoints=4)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(folder_config, workdir)
  manager = checkpoint.create_manager(workdir)
  digests = {step: checkpoint.read_meta(manager, step)['digests'] for step in (2, 4, 6, 8)}
  step_dir = lambda step: os.path.join(workdir, 'checkpoints', str(step))

  with open(os.path.join(step_dir(8), 'meta', 'metadata'), 'w') as f:
    f.write('{"config": ')  # Metadata cut off mid-write.
  data_file = largest_file(os.path.join(step_dir(6), 'state'))
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 2)  # A truncated array file.
  data_file = largest_file(os.path.join(step_dir(4), 'state'))
  with open(data_file, 'r+b') as f:  # Same size, different bytes: a silent disk error.
    f.seek(os.path.getsize(data_file) // 2)
    f.write(bytes(64))
  interrupted = os.path.join(workdir, 'checkpoints', '10.orbax-checkpoint-tmp-1700000000')
  shutil.copytree(step_dir(2), interrupted)  # A write killed before its final rename.

  with pytest.raises(CheckpointError, match=r'checkpoint at step 8 .* is corrupt'):
    evaluate.evaluate_workdir(folder_config, workdir)

  result = train.train_and_evaluate(folder_config, workdir)
  assert result['status'] == 'trained' and result['step'] == 8
  warnings = [r.getMessage() for r in caplog.records if 'is corrupt' in r.getMessage()]
  assert [w.split(':')[0] for w in warnings] == [
      'Checkpoint at step 8 is corrupt', 'Checkpoint at step 6 is corrupt',
      'Checkpoint at step 4 is corrupt']
  assert 'Resuming at step 2' in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))) == [
      'checkpoints_4', 'checkpoints_6', 'checkpoints_8']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6', '8']
  manager = checkpoint.create_manager(workdir)
  for step in (4, 6, 8):  # Retrained from step 2: the same bits as the first time.
    assert checkpoint.read_meta(manager, step)['digests'] == digests[step]


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(folder_config, tmp_path):
  folder_config.update(num_train_steps=8, checkpoint_every_steps=1, log_every_steps=3)
  folder_config.optimizer.learning_rate = 1e30
  workdir = str(tmp_path / 'run')
  with pytest.raises(NonFiniteLossError,
                     match=r'(Loss is (nan|inf) at|Parameters are not finite after) step \d'):
    train.train_and_evaluate(folder_config, workdir)
  steps = saved_steps(workdir)
  assert steps and steps[-1] < 8
  for step in steps:
    assert all(np.isfinite(x).all() for x in saved_state(workdir, step).values())


@pytest.mark.slow
@READS_FINISHED_RUN
def test_rerun_of_a_finished_run_changes_nothing(finished_run, tmp_path):
  config, finished, first = finished_run
  workdir = str(shutil.copytree(finished, tmp_path / 'run'))  # copy2: the times too.
  files = lambda: {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                   for d, _, names in os.walk(workdir) for f in names}
  before = files()
  again = train.train_and_evaluate(config, workdir)
  assert again['status'] == 'complete' and again['step'] == first['step'] == 3
  assert again['val'] == first['val']
  assert files() == before


def other_model_checkpoint(folder_config, workdir):
  """A checkpoint of a ResNet-32 in `workdir`."""
  other = folder_config.copy_and_resolve_references()
  other.model = 'resnet32'
  tx = optimizer_lib.create_optimizer(other, optimizer_lib.learning_rate_schedule(other, 3, 3))
  state = runs.init(lambda key: train_step_lib.create_train_state(
      methods.create(other), tx, key, (32, 32, 3)), other)
  manager = checkpoint.create_manager(workdir)
  checkpoint.save(manager, state, other)
  manager.wait_until_finished()


def test_checkpoint_of_another_model_is_refused(folder_config, tmp_path):
  workdir = str(tmp_path / 'run')
  other_model_checkpoint(folder_config, workdir)
  message = r"written for another model: model='resnet32' \(config: 'resnet8'\)"
  with pytest.raises(CheckpointError, match=message):
    train.train_and_evaluate(folder_config, workdir)
  with pytest.raises(CheckpointError, match=message):
    evaluate.evaluate_workdir(folder_config, workdir)
  assert saved_steps(workdir) == [0]  # Refused, not set aside as corrupt.


@pytest.fixture(scope='module')
def broken_data_dir(tmp_path_factory):
  root = make_folder(tmp_path_factory.mktemp('broken'), per_class=8)
  with open(os.path.join(root, 'train', 'ship', '0002.jpg'), 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 truncated')
  return root


# One case for each way in: flag parsing, check_config (whose every message
# tests/test_config_checks.py checks in-process), the data (as tests/test_input_pipeline.py
# does in-process) and the checkpoint.
@pytest.mark.parametrize('case, overrides, message', [
    ('unknown field', {'sila.wieght': 2},
     r"Unknown config field 'sila.wieght'; did you mean 'sila.weight'\?"),
    ('batch size', {'batch_size': 7}, 'batch_size=7 is not divisible by the 2 devices'),
    ('data dir', {'data_dir': '/nonexistent/cifar'}, "'/nonexistent/cifar' is not a directory"),
    ('image', {'data_dir': 'BROKEN'}, r'1 unreadable image\(s\) .*ship/0002.jpg'),
    ('classes', {'num_classes': 5}, r"num_classes=5 but split 'train\[:-4\]' has 3 classes"),
    ('checkpoint', {}, r"written for another model: model='resnet32'"),
])
def test_user_errors_are_one_line_and_come_before_compiling(
    case, overrides, message, data_dir, broken_data_dir, folder_config, tmp_path):
  workdir = str(tmp_path / 'run')
  if case == 'checkpoint':
    other_model_checkpoint(folder_config, workdir)
  if overrides.get('data_dir') == 'BROKEN':
    overrides['data_dir'] = broken_data_dir
  flags = cli_overrides(data_dir, num_train_steps=2) + [f'--config.{k}={v}'
                                                       for k, v in overrides.items()]
  if case == 'unknown field':
    flags.remove(f"--config.data_dir={data_dir}")  # Nothing else needs the data.
  process = launch('train.py', workdir, flags, tmp_path / 'log')
  process.communicate(timeout=300)
  log = open(tmp_path / 'log').read()
  assert process.returncode == 1, log[-3000:]
  last_line = log.strip().splitlines()[-1]
  assert last_line.startswith('train.py: ') and re.search(message, last_line), log
  assert 'Traceback' not in log
  assert 'Compiling' not in log  # JAX_LOG_COMPILES=1 logs every compilation.


def test_eval_of_a_missing_workdir_is_one_line_and_creates_nothing(data_dir, tmp_path):
  workdir = str(tmp_path / 'no' / 'such' / 'dir')
  process = launch('eval.py', workdir, cli_overrides(data_dir), tmp_path / 'log')
  process.communicate(timeout=300)
  log = open(tmp_path / 'log').read()
  assert process.returncode == 1 and 'Traceback' not in log
  assert log.strip().splitlines()[-1].endswith(f'No checkpoint in {workdir}/checkpoints.')
  assert not os.path.exists(tmp_path / 'no')


@pytest.mark.slow
@READS_FINISHED_RUN
def test_eval_reports_a_corrupt_checkpoint_in_one_line(data_dir, finished_run, tmp_path):
  workdir = str(shutil.copytree(finished_run[1], tmp_path / 'run'))
  data_file = largest_file(os.path.join(workdir, 'checkpoints', '3', 'state'))
  with open(data_file, 'r+b') as f:
    f.truncate(10)
  process = launch('eval.py', workdir, cli_overrides(data_dir), tmp_path / 'log')
  process.communicate(timeout=300)
  log = open(tmp_path / 'log').read()
  assert process.returncode == 1
  assert 'Traceback' not in log
  assert f'The checkpoint at step 3 in {workdir}/checkpoints is corrupt' in log.splitlines()[-1]
