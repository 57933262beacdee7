"""Mixed precision: bfloat16 convolutions and matmuls; float32 parameters, BatchNorm
statistics, optimizer state, logits and losses."""
import functools
import hashlib
import json
import re

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sila_jax import methods
from sila_jax.evaluation import export
from sila_jax.models import model as model_lib
from sila_jax.models.batch_norm import BatchNorm
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import train_step as train_step_lib
from tests.helpers import one_run


def floating_dtypes(tree):
  return {x.dtype for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def one_device_step(config):
  """(method, a function creating run 0's initial state, its step on one device) for
  `config`: what the bfloat16 step tests run or trace."""
  method = methods.create(config, bn_axis_name=parallel_lib.AXIS)
  schedule = optimizer_lib.learning_rate_schedule(config, 10, 5)
  tx = optimizer_lib.create_optimizer(config, schedule)
  parallel = parallel_lib.ShardMapParallel(
      one_run(train_step_lib.make_train_step(method, schedule, config), config),
      jax.devices()[:1])
  return method, lambda: train_step_lib.create_train_state(
      method, tx, jax.random.PRNGKey(0), (32, 32, 3)), parallel


@pytest.mark.slow
def test_bfloat16_step_keeps_float32_parameters_statistics_optimizer_state_and_loss(
    tiny_config):
  tiny_config.update(dtype='bfloat16', batch_size=8)
  _, create_state, parallel = one_device_step(tiny_config)
  state = create_state()
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  new_state, metrics = parallel.train_step(parallel.put_state(state), parallel.put_batch(batch))
  new_state, metrics = jax.device_get((new_state, metrics))
  for tree in (new_state.params, new_state.batch_stats, new_state.opt_state):
    assert floating_dtypes(tree) == {np.dtype(jnp.float32)}
  assert not jax.tree_util.tree_all(jax.tree.map(np.array_equal, new_state.params, state.params))
  for name in ('loss', 'loss_main', 'loss_siamese'):
    assert metrics[name].dtype == jnp.float32 and np.isfinite(metrics[name]), name


BF16_OPERANDS = re.compile(r'tensor<[0-9x]*bf16>, tensor<[0-9x]*bf16>')


def convolution_and_matmul_operands(lowered):
  """The operand types of every convolution and matmul in a lowered program."""
  return re.findall(r'stablehlo\.(?:convolution|dot_general).*:\s*\((.*?)\)\s*->',
                    lowered.as_text())


def bfloat16_and_float32_models(config):
  config.sila.update(attach='stage2', head='mlp')  # Stage adapters and hidden layers too.
  f32 = model_lib.create_model(config)
  config.dtype = 'bfloat16'
  return model_lib.create_model(config), f32


def forward(model):
  return jax.jit(lambda variables, images: model.apply(variables, images, train=True,
                                                       mutable=['batch_stats']))


@pytest.mark.parametrize('name', ['resnet20', 'dy_resnet20', 'wrn16_4'])
def test_bfloat16_model_computes_in_bfloat16_and_returns_float32(tiny_config, name):
  tiny_config.model = name
  bf16, _ = bfloat16_and_float32_models(tiny_config)
  images = jnp.zeros((2, 16, 16, 3))
  variables = jax.eval_shape(functools.partial(bf16.init, train=False), jax.random.PRNGKey(0),
                             images)
  assert floating_dtypes(variables) == {np.dtype(jnp.float32)}
  lowered = forward(bf16).lower(variables, images)  # Traced, not compiled.
  # Every convolution and matmul (attention, kernel mixing, heads) reads bfloat16 operands.
  ops = convolution_and_matmul_operands(lowered)
  assert ops and all(map(BF16_OPERANDS.fullmatch, ops)), ops
  (logits, siamese), stats = lowered.out_info
  assert logits.dtype == siamese.dtype == jnp.float32
  assert floating_dtypes(stats) == {np.dtype(jnp.float32)}


@pytest.mark.parametrize('name', ['one', 'clilr', 'byot'])
def test_bfloat16_step_of_each_neighbour_computes_in_bfloat16_and_keeps_float32(tiny_config,
                                                                               name):
  tiny_config.update(method=name, dtype='bfloat16', batch_size=8)
  method, create_state, parallel = one_device_step(tiny_config)
  state = jax.eval_shape(create_state)
  batch = {'image': jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((8,), jnp.int32)}
  lowered = parallel.train_step.lower(state, batch)  # Traced, not compiled.
  ops = convolution_and_matmul_operands(lowered)
  # Forward and backward in bfloat16, but for ONE's gated ensemble of the float32 logits, a
  # part of its loss: gate (B, m) x logits (m, B, C) and its two gradients.
  in_float32 = [o for o in ops if not BF16_OPERANDS.fullmatch(o)]
  assert len(ops) > 30 and len(in_float32) == (3 if name == 'one' else 0), in_float32
  assert all(re.fullmatch(r'tensor<8x(3|10)xf32>, tensor<(3x8x10|8x3)xf32>', o)
             for o in in_float32), in_float32
  new_state, metrics = lowered.out_info
  for tree in (new_state.params, new_state.batch_stats, new_state.opt_state, metrics):
    assert floating_dtypes(tree) == {np.dtype(jnp.float32)}
  assert set(method.metric_names) <= set(metrics)


@pytest.mark.slow
def test_bfloat16_forward_is_close_to_float32(tiny_config):
  bf16, f32 = bfloat16_and_float32_models(tiny_config)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  variables = f32.init(jax.random.PRNGKey(1), images, train=False)
  outputs, reference = (forward(model)(variables, images)[0] for model in (bf16, f32))
  for ours, ref in zip(outputs, reference):
    assert jnp.linalg.norm(ours - ref) / jnp.linalg.norm(ref) < 5e-2


def test_batch_norm_normalizes_bfloat16_in_float32():
  x = 3.0 + jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 8))
  norm = BatchNorm(use_running_average=False)
  variables = norm.init(jax.random.PRNGKey(1), x)
  y, stats = norm.apply(variables, x.astype(jnp.bfloat16), mutable=['batch_stats'])
  ref, ref_stats = norm.apply(variables, x.astype(jnp.bfloat16).astype(jnp.float32),
                              mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16
  chex.assert_trees_all_equal(stats, ref_stats)  # float32 statistics of the same values.
  chex.assert_trees_all_equal(y, ref.astype(jnp.bfloat16))


@pytest.mark.parametrize('dtype', [None, 'bfloat16'])
def test_export_rebuilds_its_model_in_its_dtype_and_older_ones_in_float32(tmp_path, dtype):
  """Exports written before `dtype` was a model field (None) rebuild a float32 model."""
  payload = flax.serialization.msgpack_serialize({'params': {}, 'batch_stats': {}})
  (tmp_path / export.VARIABLES).write_bytes(payload)
  fields = {'model': 'resnet20', 'width': 1.0, 'dropout_rate': 0.0, 'dynamic.num_kernels': 4,
            'num_classes': 10, 'image_size': 32, 'normalize_mean': [0.5] * 3,
            'normalize_std': [0.25] * 3}
  assert set(fields) == set(export.MODEL_FIELDS) - {'dtype'}
  if dtype:
    fields['dtype'] = dtype
  (tmp_path / export.DESCRIPTION).write_text(json.dumps(
      {'model': fields, 'step': 3, 'attention_temperature': 1.0,
       'sha256': hashlib.sha256(payload).hexdigest()}))
  config = export.load_export(str(tmp_path)).config
  assert config.dtype == (dtype or 'float32')
  assert model_lib.create_model(config).dtype == model_lib.DTYPES[dtype or 'float32']
