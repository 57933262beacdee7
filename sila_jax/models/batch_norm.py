"""BatchNorm whose cross-device statistics come from `collectives.device_mean`.

Computes what `flax.linen.BatchNorm` (fast variance) computes for float32 inputs, with the
same variables ({'scale', 'bias'} params, {'mean', 'var'} batch_stats), but averages the
statistics over `axis_name` in a fixed order, so training does not depend on how the devices
are spread over processes. It normalizes in float32 whatever the input's dtype (in bfloat16,
with 8 bits of mantissa, the variance, a mean square less a squared mean, would be mostly
rounding), keeps float32 statistics and returns the input's dtype.
"""
import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from sila_jax.training import collectives


class BatchNorm(nn.Module):
  """Normalizes (..., C) over every axis but the last.

  With `use_running_average`, the stored statistics are used; otherwise the batch's (averaged
  over the `axis_name` devices, if given), and the stored ones move towards them by
  1 - `momentum`.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, inputs):
    x = inputs.astype(jnp.float32)
    features = x.shape[-1]
    stored_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    stored_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    if self.use_running_average:
      mean, var = stored_mean.value, stored_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      square = lax.square(x)
      mean, mean_square = x.mean(axes), square.mean(axes)
      if self.axis_name is not None and not self.is_initializing():
        mean, mean_square = collectives.device_mean((mean, mean_square), self.axis_name)
      var = jnp.maximum(0.0, mean_square - lax.square(mean))  # Rounding can make it negative.
      if not self.is_initializing():
        stored_mean.value = self.momentum * stored_mean.value + (1 - self.momentum) * mean
        stored_var.value = self.momentum * stored_var.value + (1 - self.momentum) * var
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    y = x - mean
    y *= lax.rsqrt(var + self.epsilon) * scale
    return (y + bias).astype(inputs.dtype)
