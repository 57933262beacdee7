"""Dynamic convolution (Chen et al., CVPR 2020): K kernels mixed into one kernel per sample.

A small attention branch (global average pool -> Dense -> ReLU -> Dense -> softmax with a
temperature) gives each sample weights over the K kernels; their weighted sum is that
sample's kernel, and every sample is convolved with its own kernel in one batched pass.
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# He-normal over each kernel's fan-out, like backbones.conv_init; the leading K axis is a
# batch of kernels, not part of the fan. Defined here because backbones.py imports this module.
default_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal', batch_axis=(0,))


class DynamicAttention(nn.Module):
  """Per-sample kernel weights: x (B, H, W, C) -> softmax(logits / temperature), (B, K)."""
  num_kernels: int
  hidden: int

  @nn.compact
  def __call__(self, x, temperature):
    pooled = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_kernels)(nn.relu(nn.Dense(self.hidden)(pooled)))
    return jax.nn.softmax(logits / temperature)


def per_sample_conv(x, kernels, strides: int, padding: int):
  """Each sample convolved with its own kernel: x (B, H, W, C_in), kernels (B, kh, kw, C_in,
  C_out) -> (B, H', W', C_out), H' = (H + 2 * padding - kh) // strides + 1."""
  # A sum over the kh * kw taps of matmuls batched over samples, rather than a grouped
  # convolution (batch moved into channels, feature_group_count=B) or jax.vmap of
  # lax.conv_general_dilated, which lowers to exactly that grouped convolution. On XLA:CPU at
  # B=128, 32x32x16 -> 16 the grouped one is slower forward (48 vs 32 ms), and its kernel
  # gradient, a batch_group_count convolution, makes forward + backward take 13 s (76 ms here).
  _, height, width, _ = x.shape
  _, kh, kw, _, _ = kernels.shape
  out_h = (height + 2 * padding - kh) // strides + 1
  out_w = (width + 2 * padding - kw) // strides + 1
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  y = 0.0
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i:i + strides * (out_h - 1) + 1:strides, j:j + strides * (out_w - 1) + 1:strides]
      y = y + jnp.einsum('bhwc,bco->bhwo', tap, kernels[:, i, j])
  return y


class DynamicConv(nn.Module):
  """Dynamic convolution without bias: x (B, H, W, C_in), temperature -> (B, H', W', features).

  `temperature` is a Python float or a traced scalar (it is annealed inside the train step).
  Parameters: 'kernel' (K, kh, kw, C_in, features) and the attention's two Dense layers with
  max(C_in // reduction, 4) hidden units.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: int = 1
  num_kernels: int = 4
  reduction: int = 4
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, x, temperature):
    in_features = x.shape[-1]
    weights = DynamicAttention(self.num_kernels, max(in_features // self.reduction, 4),
                               name='attention')(x, temperature)
    kernel = self.param('kernel', self.kernel_init,
                        (self.num_kernels, *self.kernel_size, in_features, self.features))
    kernels = jnp.einsum('bk,khwio->bhwio', weights, kernel)
    return per_sample_conv(x, kernels, self.strides, self.padding)
