"""What a run reports besides its losses: gradient and parameter norms, a profiler trace of
chosen steps, an ETA that leaves compilation out, and the validation a crash cut short,
redone on resume. (sila-plot's norm panel: tests/test_plot.py.)"""
import glob
import io
import json
import os
import shutil
import time

import numpy as np
import optax
import pytest

from sila_jax import config_checks
from sila_jax.errors import ConfigError
from sila_jax.training import metrics
from sila_jax.training import progress
from sila_jax.training import train
from tests.helpers import make_tiny_config, saved_state

pytestmark = pytest.mark.xdist_group('training_records')


@pytest.fixture(scope='module')
def trained(ten_class_folder, tmp_path_factory):
  """4 steps of the tiny config, validated and checkpointed every 2, steps 2..3 traced:
  (config, workdir), read only."""
  config = make_tiny_config(ten_class_folder)
  config.update(num_train_steps=4, eval_every_steps=2, checkpoint_every_steps=2,
                profile_steps='1,3')
  workdir = str(tmp_path_factory.mktemp('trained'))
  assert train.train_and_evaluate(config, workdir)['status'] == 'trained'
  return config, workdir


@pytest.mark.slow
def test_training_records_hold_the_norms_of_the_gradient_and_of_the_new_parameters(trained):
  _, workdir = trained
  records = metrics.read(workdir, metrics.TRAIN)
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  grad_norms = [r['grad_norm'] for r in records]
  assert all(np.isfinite(grad_norms)) and min(grad_norms) > 0
  assert len(set(grad_norms)) == 4  # A new gradient every step.
  params = {k: v for k, v in saved_state(workdir, 4).items() if k.startswith('params/')}
  assert records[-1]['param_norm'] == pytest.approx(float(optax.global_norm(params)), rel=1e-5)


@pytest.mark.slow
def test_profile_steps_writes_a_trace_for_tensorboard_and_perfetto(trained):
  _, workdir = trained
  traces = glob.glob(os.path.join(workdir, train.PROFILE, 'plugins', 'profile', '*', '*'))
  assert {os.path.basename(t).split('.', 1)[1] for t in traces
          if not t.endswith('perfetto_trace.json.gz')} >= {'xplane.pb'}
  assert any(t.endswith('perfetto_trace.json.gz') for t in traces)


@pytest.mark.parametrize('value', ['2', '3,3', '4,2', 'a,b', '1,2,3', '-1,2'])
def test_bad_profile_steps_are_one_line(tiny_config, value):
  tiny_config.profile_steps = value
  with pytest.raises(ConfigError, match="^profile_steps must be 'a,b'"):
    config_checks.check_config(tiny_config, num_devices=8)


def test_profile_steps_parse():
  assert config_checks.profiled_steps('') is None
  assert config_checks.profiled_steps('10,15') == (10, 15)


@pytest.mark.slow
def test_a_validation_cut_short_after_its_checkpoint_is_redone_on_resume(trained, tmp_path):
  config, original = trained
  validations = {r['step']: r for r in metrics.read(original, metrics.VALIDATION)}
  assert sorted(validations) == [2, 4]

  def crashed_after_checkpoint(step, workdir):
    """`original` as a crash between step `step`'s checkpoint and its validation leaves it."""
    shutil.copytree(original, workdir)
    for later in os.listdir(os.path.join(workdir, 'checkpoints')):
      if int(later) > step:
        shutil.rmtree(os.path.join(workdir, 'checkpoints', later))
    kept = [r for r in metrics.read(workdir) if r['step'] < step
            or (r['step'] == step and r['type'] == metrics.TRAIN)]
    metrics.write_atomically(os.path.join(workdir, metrics.FILE),
                             ''.join(json.dumps(r) + '\n' for r in kept))
    return workdir

  # The last step: the run is complete, and only its validation is missing.
  workdir = crashed_after_checkpoint(4, str(tmp_path / 'at_the_end'))
  result = train.train_and_evaluate(config, workdir)
  assert result['status'] == 'complete' and result['val'] == pytest.approx(
      {k: v for k, v in validations[4].items() if k not in ('type', 'step')})
  assert [r['step'] for r in metrics.read(workdir, metrics.VALIDATION)] == [2, 4]

  # A step in the middle: validated first, then training goes on.
  workdir = crashed_after_checkpoint(2, str(tmp_path / 'in_the_middle'))
  assert train.train_and_evaluate(config, workdir)['status'] == 'trained'
  again = metrics.read(workdir, metrics.VALIDATION)
  assert [r['step'] for r in again] == [2, 4]
  assert again[0] == pytest.approx(validations[2])


def test_the_eta_leaves_out_the_first_step():
  bar = progress.Progress('train', 100, stream=io.StringIO())
  assert bar.line().endswith('ETA ?')
  time.sleep(1.0)  # The first step: compilation.
  bar.update()
  assert bar.line().endswith('ETA ?')  # One step says nothing of the others' pace.
  start = time.perf_counter()
  for _ in range(4):
    time.sleep(0.02)
    bar.update()
  seconds_per_step = (time.perf_counter() - start) / 4
  minutes, seconds = bar.line().rsplit('ETA ', 1)[1].split(':')
  eta = 60 * int(minutes) + int(seconds)
  assert abs(eta - 95 * seconds_per_step) <= 1.0, (eta, seconds_per_step)
  bar.close()
