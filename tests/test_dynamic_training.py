"""DY-ResNets in training: the annealed attention temperature in the jitted step, devices,
export, eval."""
import chex
import jax
import numpy as np
import pytest

from sila_jax import methods
from sila_jax.evaluation import evaluate
from sila_jax.evaluation import export
from sila_jax.models import model as model_lib
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import train
from sila_jax.training import train_step as train_step_lib
from tests.helpers import (assert_eight_devices_match_one, batches, every_run, plain_param_count,
                           run, setup)


@pytest.fixture
def dy_config(tiny_config):
  tiny_config.model = 'dy_resnet8'
  tiny_config.dynamic.update(tau_start=30.0, tau_epochs=2.0)
  return tiny_config


def test_attention_temperature_anneals_linearly_to_one(dy_config):
  tau = optimizer_lib.attention_temperature_schedule(dy_config, steps_per_epoch=10)
  np.testing.assert_allclose([tau(0), tau(10), tau(20), tau(500)], [30.0, 15.5, 1.0, 1.0],
                             rtol=1e-6)
  dy_config.dynamic.tau_epochs = 0.0
  tau = optimizer_lib.attention_temperature_schedule(dy_config, steps_per_epoch=10)
  assert tau(0) == tau(7) == 1.0


def annealed_step(config):
  """(schedule, initial state, step of every run) of a DY-ResNet-20 with two Siamese heads at
  stage 2, its attention temperature annealed over 2 steps. The tests below build the same
  program, which the session's compilation cache then compiles once."""
  config.sila.update(num_heads=2, attach='stage2')
  method, _, schedule, state = setup(config, steps_per_epoch=1)
  step_fn = every_run(train_step_lib.make_train_step(method, schedule, config), config)
  return schedule, state, step_fn


# One worker runs both, so that the second finds the first's compiled step in the cache.
SHARES_THE_STEP = pytest.mark.xdist_group('test_dynamic_training.annealed_step')


@pytest.mark.slow
@SHARES_THE_STEP
def test_the_step_uses_the_attention_temperature_of_its_step_number(dy_config):
  schedule, state, step_fn = annealed_step(dy_config)
  parallel = parallel_lib.ShardMapParallel(step_fn, jax.devices()[:1])
  annealed, metrics = run(parallel, state, batches(2))
  # Metrics of the one run.
  np.testing.assert_allclose([m['attention_temperature'][0] for m in metrics], [30.0, 15.5])
  # Resuming from the state after one step continues with that step's attention temperature.
  after_one, _ = run(parallel, state, batches(1))
  resumed, resumed_metrics = run(parallel, after_one, batches(2)[1:])
  np.testing.assert_allclose(resumed_metrics[0]['attention_temperature'], [15.5])
  chex.assert_trees_all_equal(resumed, annealed)
  # And the attention temperature matters: at a constant 1 the same steps end elsewhere.
  constant = parallel_lib.ShardMapParallel(
      every_run(train_step_lib.make_train_step(
          methods.create(dy_config, bn_axis_name=parallel_lib.AXIS), schedule, dy_config),
          dy_config),
      jax.devices()[:1])
  unannealed, _ = run(constant, state, batches(2))
  assert not np.allclose(unannealed.params[0]['backbone']['DynamicConv_0']['kernel'],
                         annealed.params[0]['backbone']['DynamicConv_0']['kernel'])


@pytest.mark.slow
@SHARES_THE_STEP
def test_dy_resnet_with_sila_on_eight_devices_matches_one(dy_config):
  _, state, step_fn = annealed_step(dy_config)
  assert_eight_devices_match_one(step_fn, state, batches(1))


@pytest.mark.slow
def test_dy_resnet_with_sila_trains_exports_and_evaluates(dy_config, tmp_path):
  dy_config.dynamic.tau_epochs = 100.0  # Still annealing at the end: eval must use tau(3).
  workdir, export_dir = str(tmp_path / 'run'), str(tmp_path / 'export')
  result = train.train_and_evaluate(dy_config, workdir)
  description = export.export(dy_config, workdir, export_dir)
  from_checkpoint = evaluate.evaluate_workdir(dy_config, workdir)
  from_export = evaluate.evaluate_export(dy_config, export_dir)
  # 40 examples in 8 shards of 5: 2 steps of 2 per epoch.
  tau = optimizer_lib.attention_temperature_schedule(dy_config, steps_per_epoch=2)
  assert description['attention_temperature'] == pytest.approx(float(tau(3)))
  assert result['train']['attention_temperature'] > 1.0
  assert set(model_lib.main_branch(export.load_export(export_dir).variables)['params']) == {
      'backbone', 'head'}
  assert description['num_params'] == plain_param_count(dy_config)
  assert from_export == from_checkpoint
  assert from_checkpoint['accuracy'] == pytest.approx(result['val']['accuracy'])
  assert from_checkpoint['loss'] == pytest.approx(result['val']['loss'], rel=1e-5)
