"""collectives.device_mean and the BatchNorm built on it, on 8 fake CPU devices."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from sila_jax.models.batch_norm import BatchNorm
from sila_jax.training import collectives
from tests.helpers import AXIS


def test_eight_fake_devices():
  # conftest.py asks XLA for them before JAX starts; every 8-device test relies on it.
  assert jax.device_count() == 8
  assert {d.platform for d in jax.devices()} == {'cpu'}


def per_device(fn, num_devices=8):
  """fn on each device's slice of every argument's leading axis; outputs stacked per device."""
  mesh = Mesh(np.asarray(jax.devices()[:num_devices]), (AXIS,))
  return jax.jit(jax.shard_map(lambda *args: jax.tree_util.tree_map(lambda y: y[None], fn(*args)),
                               mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=False))


def spread_values(shape, seed):
  """float32 values over six orders of magnitude, so that the order of a sum shows."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)).astype(np.float32)


@pytest.mark.parametrize('num_devices', [1, 3, 8])
def test_device_mean_adds_in_device_order_and_is_the_same_on_every_device(num_devices):
  # Leaves whose sizes the device count does not divide, a scalar among them.
  tree = {'a': spread_values((num_devices, 5, 3), 0), 'b': spread_values((num_devices,), 1),
          'c': spread_values((num_devices, 7), 2)}
  out = per_device(lambda t: collectives.device_mean(
      jax.tree_util.tree_map(lambda x: x[0], t), AXIS), num_devices)(tree)

  for name, values in tree.items():
    total = values[0]
    for d in range(1, num_devices):  # float32, device 0 first.
      total = total + values[d]
    expected = total * np.float32(1 / num_devices)
    chex.assert_shape(out[name], values.shape)
    for d in range(num_devices):
      np.testing.assert_array_equal(out[name][d], expected, err_msg=f'{name}, device {d}')


def test_device_mean_gradient_equals_pmeans():
  x = spread_values((8, 6), 3) / 100
  w = spread_values((8, 6), 4) / 100

  def grad_of(mean):
    return per_device(jax.grad(lambda x, w: jnp.sum(jnp.sin(mean(x[0]) * w[0]))))(x, w)
  chex.assert_trees_all_close(grad_of(lambda v: collectives.device_mean(v, AXIS)),
                              grad_of(lambda v: jax.lax.pmean(v, AXIS)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('num_devices', [1, 8])
def test_batch_norm_equals_flax_batch_norm_values_statistics_and_gradients(num_devices):
  """Same variables, outputs, new statistics and gradients as flax's BatchNorm; one device
  bit for bit, 8 devices (statistics averaged over them) up to the order of the sums."""
  x = jnp.asarray(spread_values((16, 4, 4, 5), 5) / 100 + 1.0)
  settings = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)
  ours, theirs = BatchNorm(**settings), nn.BatchNorm(**settings)
  variables = theirs.init(jax.random.PRNGKey(0), x)
  chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.PRNGKey(0), x), variables)
  variables = {'params': {'scale': jnp.linspace(0.5, 2.0, 5), 'bias': jnp.linspace(-1, 1, 5)},
               'batch_stats': {'mean': jnp.full(5, 0.1), 'var': jnp.full(5, 2.0)}}

  def step(module):
    def loss(params, x):
      y, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                x, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y)), (y, updates['batch_stats'])
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

  if num_devices == 1:
    got = step(ours)(variables['params'], x)
    expected = step(theirs)(variables['params'], x)
    chex.assert_trees_all_equal(got, expected)
  else:
    run = lambda module: per_device(lambda x: step(module)(variables['params'], x))(x)
    got = run(BatchNorm(**settings, axis_name=AXIS))
    expected = run(nn.BatchNorm(**settings, axis_name=AXIS))
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
    # The statistics are the whole batch's, on every device.
    (_, (_, stats)), _ = got
    chex.assert_trees_all_equal(stats['mean'], jnp.broadcast_to(stats['mean'][0], (8, 5)))
    np.testing.assert_allclose(stats['mean'][0], 0.9 * 0.1 + 0.1 * jnp.mean(x, axis=(0, 1, 2)),
                               rtol=1e-6)
