"""The backbones' convolution under vmap: one per slice, or grouped, equal to one per peer."""
import chex
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from sila_jax.models import conv

SETTINGS = dict(window_strides=(2, 2), padding=[(1, 1), (1, 1)],
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def reference(images, kernels):
  """One lax convolution per peer: images (K, B, H, W, C) or (B, H, W, C), kernels (K, ...)."""
  return jnp.stack([lax.conv_general_dilated(images if images.ndim == 4 else images[k],
                                             kernels[k], **SETTINGS)
                    for k in range(len(kernels))])


def vmapped(form):
  """The convolution of `form` (conv.FORMS) vmapped over peers' kernels (and images)."""
  def peers_conv(images, kernels):
    image_axis = None if images.ndim == 4 else 0
    return jax.vmap(lambda x, w: conv.FORMS[form](x, w, **SETTINGS),
                    in_axes=(image_axis, 0))(images, kernels)
  return peers_conv


sliced = vmapped('sliced')


def peer_inputs(shared_images):
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  images = jax.random.normal(keys[0], (4, 8, 8, 3) if shared_images else (2, 4, 8, 8, 3))
  return images, jax.random.normal(keys[1], (2, 3, 3, 3, 5))


def sin_loss(f):
  return lambda x, w: jnp.sum(jnp.sin(f(x, w)))


@pytest.mark.parametrize('shared_images', [True, False])
def test_vmap_equals_one_convolution_per_peer_values_and_gradients(shared_images):
  images, kernels = peer_inputs(shared_images)
  out = sliced(images, kernels)
  chex.assert_shape(out, (2, 4, 4, 4, 5))
  chex.assert_trees_all_equal(out, reference(images, kernels))
  # With shared images, their gradient sums the peers' contributions.
  chex.assert_trees_all_close(jax.grad(sin_loss(sliced), argnums=(0, 1))(images, kernels),
                              jax.grad(sin_loss(reference), argnums=(0, 1))(images, kernels),
                              rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('shared_images', [True, False])
def test_grouped_form_equals_sliced_values_and_gradients(shared_images):
  images, kernels = peer_inputs(shared_images)
  grouped = vmapped('grouped')
  chex.assert_trees_all_close(grouped(images, kernels), sliced(images, kernels),
                              rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(jax.grad(sin_loss(grouped), argnums=(0, 1))(images, kernels),
                              jax.grad(sin_loss(sliced), argnums=(0, 1))(images, kernels),
                              rtol=1e-5, atol=1e-5)


def test_unbatched_it_is_lax_conv_general_dilated():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  chex.assert_trees_all_equal(conv.conv_general_dilated(images, kernel, **SETTINGS),
                              lax.conv_general_dilated(images, kernel, **SETTINGS))
  chex.assert_trees_all_equal(
      jax.grad(lambda w: jnp.sum(conv.conv_general_dilated(images, w, **SETTINGS) ** 2))(kernel),
      jax.grad(lambda w: jnp.sum(lax.conv_general_dilated(images, w, **SETTINGS) ** 2))(kernel))
