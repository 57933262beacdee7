"""DynamicConv: attention weights, per-sample kernels, and agreement with static convolutions."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sila_jax.models import dynamic_conv
from sila_jax.models import model as model_lib

K, C_IN, C_OUT = 4, 8, 6


def images(batch=3, size=9, channels=C_IN, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, channels))


def init(layer, x, attention_temperature=1.0):
  return layer.init(jax.random.PRNGKey(1), x, attention_temperature)['params']


def attention_weights(params, x, attention_temperature):
  """(B, K) weights the layer with `params` gives the samples of x."""
  attention = dynamic_conv.DynamicAttention(K, max(x.shape[-1] // 4, 4))
  return attention.apply({'params': params['attention']}, x, attention_temperature)


def static_conv(x, kernel, strides=1):
  """x (B, H, W, C_in) convolved with one kernel (kh, kw, C_in, C_out), padding 1."""
  return lax.conv_general_dilated(x, kernel, (strides, strides), ((1, 1), (1, 1)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def aggregated_kernels(params, x, attention_temperature):
  """(B, kh, kw, C_in, C_out): each sample's attention-weighted kernel."""
  return jnp.einsum('bk,k...->b...', attention_weights(params, x, attention_temperature),
                    params['kernel'])


@pytest.mark.parametrize('attention_temperature', [0.1, 1.0, 30.0])
def test_attention_weights_are_a_distribution_per_sample(attention_temperature):
  x = images()
  params = init(dynamic_conv.DynamicConv(C_OUT), x)
  weights = attention_weights(params, x, attention_temperature)
  chex.assert_shape(weights, (3, K))
  assert jnp.all(weights >= 0)
  chex.assert_trees_all_close(weights.sum(axis=-1), jnp.ones(3), atol=1e-6)


def test_attention_is_near_uniform_at_high_attention_temperature():
  x = images()
  params = init(dynamic_conv.DynamicConv(C_OUT), x)
  chex.assert_trees_all_close(attention_weights(params, x, 1e6), jnp.full((3, K), 1 / K),
                              atol=1e-5)
  assert jnp.max(jnp.abs(attention_weights(params, x, 1.0) - 1 / K)) > 1e-3


def test_traced_attention_temperature_matches_python_float():
  x = images()
  layer = dynamic_conv.DynamicConv(C_OUT)
  variables = {'params': init(layer, x)}
  traced = jax.jit(lambda t: layer.apply(variables, x, t))(jnp.float32(2.0))
  chex.assert_trees_all_close(traced, layer.apply(variables, x, 2.0), atol=1e-6)


@pytest.mark.parametrize('strides', [1, 2])
def test_uniform_attention_is_a_static_conv_with_the_mean_kernel(strides):
  x = images(size=8)
  layer = dynamic_conv.DynamicConv(C_OUT, strides=strides)
  params = init(layer, x)
  # A zero last Dense gives zero logits: uniform weights at any attention temperature.
  params['attention']['Dense_1'] = jax.tree.map(jnp.zeros_like, params['attention']['Dense_1'])
  expected = static_conv(x, params['kernel'].mean(axis=0), strides)
  chex.assert_trees_all_close(layer.apply({'params': params}, x, 1.0), expected, atol=1e-5)


def test_each_sample_gets_its_own_kernel():
  x = images(batch=2)
  layer = dynamic_conv.DynamicConv(C_OUT)
  params = init(layer, x)
  kernels = aggregated_kernels(params, x, 1.0)
  assert jnp.max(jnp.abs(kernels[0] - kernels[1])) > 1e-3
  y = layer.apply({'params': params}, x, 1.0)
  swapped = static_conv(x, kernels[1])[0], static_conv(x, kernels[0])[1]
  assert jnp.max(jnp.abs(y[0] - swapped[0])) > 1e-3
  assert jnp.max(jnp.abs(y[1] - swapped[1])) > 1e-3


@pytest.mark.parametrize('strides', [1, 2])
def test_layer_matches_a_per_sample_loop_and_vmapped_conv(strides):
  x = images(batch=4, size=9)
  layer = dynamic_conv.DynamicConv(C_OUT, strides=strides)
  params = init(layer, x)
  kernels = aggregated_kernels(params, x, 0.5)
  y = layer.apply({'params': params}, x, 0.5)
  loop = jnp.stack([static_conv(x[b:b + 1], kernels[b], strides)[0] for b in range(4)])
  chex.assert_trees_all_close(y, loop, atol=1e-5)
  # jax.vmap of a conv over (image, kernel) pairs: a grouped convolution with B groups.
  vmapped = jax.vmap(lambda xb, kb: static_conv(xb[None], kb, strides)[0])(x, kernels)
  chex.assert_trees_all_close(y, vmapped, atol=1e-5)


def test_gradients_match_the_per_sample_loop():
  x = images(batch=2, size=6)
  kernels = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 3, C_IN, C_OUT))

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

  loop = loss(lambda x, k: jnp.stack([static_conv(x[b:b + 1], k[b])[0] for b in range(2)]))
  ours = loss(lambda x, k: dynamic_conv.per_sample_conv(x, k, strides=1, padding=1))
  chex.assert_trees_all_close(jax.grad(ours, (0, 1))(x, kernels),
                              jax.grad(loop, (0, 1))(x, kernels), atol=1e-4)


@pytest.mark.parametrize('strides', [1, 2])
def test_grouped_form_equals_taps_values_and_gradients(strides):
  x = images(batch=3, size=7)
  params = init(dynamic_conv.DynamicConv(C_OUT, strides=strides), x)

  def values_and_gradients(form):
    """The layer's output, and the gradients of a loss on it: kernel, attention and x."""
    layer = dynamic_conv.DynamicConv(C_OUT, strides=strides, form=form)

    def apply(params, x):
      return layer.apply({'params': params}, x, 0.5)
    grad = jax.grad(lambda params, x: jnp.sum(jnp.sin(apply(params, x))), (0, 1))
    return jax.jit(lambda params, x: (apply(params, x), grad(params, x)))(params, x)
  chex.assert_trees_all_close(values_and_gradients('grouped'), values_and_gradients('taps'),
                              rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('strides, size, out_size', [(1, 32, 32), (2, 32, 16), (2, 7, 4)])
def test_output_shapes(strides, size, out_size):
  x = images(batch=2, size=size)
  layer = dynamic_conv.DynamicConv(C_OUT, strides=strides)
  y = layer.apply({'params': init(layer, x)}, x, 1.0)
  chex.assert_shape(y, (2, out_size, out_size, C_OUT))


@pytest.mark.parametrize('c_in, c_out, num_kernels, reduction', [(8, 6, 4, 4), (3, 16, 4, 4),
                                                                   (64, 64, 2, 8)])
def test_parameter_count(c_in, c_out, num_kernels, reduction):
  layer = dynamic_conv.DynamicConv(c_out, num_kernels=num_kernels, reduction=reduction)
  x = jnp.zeros((1, 8, 8, c_in))
  hidden = max(c_in // reduction, 4)
  expected = (num_kernels * 3 * 3 * c_in * c_out  # The kernels (no bias).
              + c_in * hidden + hidden + hidden * num_kernels + num_kernels)  # Two Dense layers.
  params = jax.eval_shape(lambda: init(layer, x))
  assert model_lib.count_params(params) == expected
  chex.assert_shape(params['kernel'], (num_kernels, 3, 3, c_in, c_out))


def test_kernels_are_he_initialised_over_each_kernels_fan_out():
  layer = dynamic_conv.DynamicConv(64, num_kernels=4)
  kernel = init(layer, jnp.zeros((1, 4, 4, 32)))['kernel']
  # He-normal over fan-out 3 * 3 * 64; the K axis is not part of the fan.
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / (3 * 3 * 64)), rtol=0.05)
