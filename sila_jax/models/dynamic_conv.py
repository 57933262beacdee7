"""Dynamic convolution (Chen et al., CVPR 2020): K kernels mixed into one kernel per sample.

A small attention branch (global average pool -> Dense -> ReLU -> Dense -> softmax with an
attention temperature) gives each sample weights over the K kernels; their weighted sum is that
sample's kernel, and every sample is convolved with its own kernel in one batched pass.
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# He-normal over each kernel's fan-out, like backbones.conv_init; the leading K axis is a
# batch of kernels, not part of the fan. Defined here because backbones.py imports this module.
default_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal', batch_axis=(0,))


class DynamicAttention(nn.Module):
  """Per-sample kernel weights: x (B, H, W, C) -> softmax(logits / attention_temperature),
  (B, K) float32.

  The Dense layers compute in `dtype`; the softmax in float32, where the small differences
  that a high attention temperature leaves between logits survive.
  """
  num_kernels: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_temperature):
    pooled = jnp.mean(x, axis=(1, 2))
    hidden = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(pooled))
    logits = nn.Dense(self.num_kernels, dtype=self.dtype)(hidden)
    return jax.nn.softmax(logits.astype(jnp.float32) / attention_temperature)


def _taps_conv(x, kernels, strides: int, padding: int):
  """per_sample_conv as a sum over the kh * kw taps of matmuls batched over samples."""
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


def _grouped_conv(x, kernels, strides: int, padding: int):
  """per_sample_conv as one convolution with the batch moved into B feature groups."""
  batch, height, width, c_in = x.shape
  _, kh, kw, _, c_out = kernels.shape
  # Channels b * C_in + c hold sample b's channel c; group b's outputs are sample b's.
  lhs = x.transpose(1, 2, 0, 3).reshape(1, height, width, batch * c_in)
  rhs = kernels.transpose(1, 2, 3, 0, 4).reshape(kh, kw, c_in, batch * c_out)
  y = lax.conv_general_dilated(lhs, rhs, (strides, strides), [(padding, padding)] * 2,
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               feature_group_count=batch)
  return y.reshape(*y.shape[1:3], batch, c_out).transpose(2, 0, 1, 3)


# config.kernels.dynamic_conv -> the per-sample convolution.
FORMS = {'taps': _taps_conv, 'grouped': _grouped_conv}


def per_sample_conv(x, kernels, strides: int, padding: int, form: str = 'taps'):
  """Each sample convolved with its own kernel: x (B, H, W, C_in), kernels (B, kh, kw, C_in,
  C_out) -> (B, H', W', C_out), H' = (H + 2 * padding - kh) // strides + 1.

  `form` (FORMS) says how: 'taps', a sum over the kh * kw taps of matmuls batched over
  samples, or 'grouped', a grouped convolution (batch moved into channels,
  feature_group_count=B), which is also what jax.vmap of lax.conv_general_dilated lowers to.
  On XLA:CPU at B=128, 32x32x16 -> 16 the grouped one is slower forward (48 vs 32 ms), and
  its kernel gradient, a batch_group_count convolution, makes forward + backward take 13 s
  (76 ms with taps).
  """
  return FORMS[form](x, kernels, strides, padding)


class DynamicConv(nn.Module):
  """Dynamic convolution without bias: x (B, H, W, C_in), attention_temperature ->
  (B, H', W', features).

  `attention_temperature` is a Python float or a traced scalar (it is annealed inside the
  train step).
  Parameters (float32): 'kernel' (K, kh, kw, C_in, features) and the attention's two Dense
  layers with max(C_in // reduction, 4) hidden units. It computes in `dtype`, with the
  per-sample convolution of `form` (per_sample_conv).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: int = 1
  num_kernels: int = 4
  reduction: int = 4
  kernel_init: Callable = default_kernel_init
  dtype: Any = jnp.float32
  form: str = 'taps'

  @nn.compact
  def __call__(self, x, attention_temperature):
    in_features = x.shape[-1]
    weights = DynamicAttention(self.num_kernels, max(in_features // self.reduction, 4),
                               self.dtype, name='attention')(x, attention_temperature)
    kernel = self.param('kernel', self.kernel_init,
                        (self.num_kernels, *self.kernel_size, in_features, self.features))
    x, weights, kernel = nn.dtypes.promote_dtype(x, weights, kernel, dtype=self.dtype)
    kernels = jnp.einsum('bk,khwio->bhwio', weights, kernel)
    return per_sample_conv(x, kernels, self.strides, self.padding, self.form)
