"""The backbones' convolution under DML's vmap: one per peer slice, or one grouped convolution.

DML peers (sila_jax/methods/peers.py) stack their parameters and apply the model under `jax.vmap`.
vmap of a convolution whose kernel and input are both batched lowers to one grouped
convolution (`feature_group_count` = peers), and its kernel gradient to a
`batch_group_count` one. On XLA:CPU, forward + backward of that for two peers at batch 128,
32x32x16 -> 16, takes 660 ms, against 15 ms for one peer's convolution. So under vmap this
convolution runs once per slice of the mapped axis, forward and backward; everything else
in the model stays batched. Unbatched, it is exactly `lax.conv_general_dilated`.
It supports reverse-mode differentiation (what training needs), not forward mode.
`FORMS` names both forms for `config.kernels.peer_conv` (other backends may prefer 'grouped').
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def _sliced_under_vmap(f: Callable) -> Callable:
  """`f`, whose vmap calls `f` once per index of the mapped axis and stacks the results."""
  g = jax.custom_batching.custom_vmap(f)

  @g.def_vmap
  def rule(axis_size, in_batched, *args):
    outputs = [g(*(x[i] if batched else x for x, batched in zip(args, in_batched)))
               for i in range(axis_size)]
    stacked = jax.tree_util.tree_map(lambda *ys: jnp.stack(ys), *outputs)
    return stacked, jax.tree_util.tree_map(lambda _: True, stacked)
  return g


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the same arguments (flax's `nn.Conv` passes them all)."""
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  forward = _sliced_under_vmap(conv)
  backward = _sliced_under_vmap(lambda lhs, rhs, cotangent: jax.vjp(conv, lhs, rhs)[1](cotangent))

  # custom_vmap alone cannot be differentiated in reverse mode; custom_vjp makes the
  # backward pass a second sliced function.
  @jax.custom_vjp
  def sliced_conv(lhs, rhs):
    return forward(lhs, rhs)

  sliced_conv.defvjp(lambda lhs, rhs: (forward(lhs, rhs), (lhs, rhs)),
                     lambda residuals, cotangent: backward(*residuals, cotangent))
  return sliced_conv(lhs, rhs)


# config.kernels.peer_conv -> the convolution nn.Conv runs: 'grouped' is plain vmap's lowering.
FORMS: dict[str, Callable] = {'sliced': conv_general_dilated,
                              'grouped': lax.conv_general_dilated}
