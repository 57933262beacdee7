"""A mean over devices whose result does not depend on how the devices are spread over processes.

`lax.pmean` leaves the order of the sum to the runtime: XLA's in-process all-reduce and gloo's
cross-process one add the same numbers in different orders, so 2 processes x 2 devices and
1 process x 4 devices drift apart by rounding. `device_mean` moves data with collectives that
only copy (all-to-all, all-gather) and adds in a fixed order, device 0 first: bit-identical
results for the same device count under any process layout, with the traffic and memory of a
ring all-reduce (each device sums 1/n of the values). Its gradient is the same mean of the
cotangents, as `lax.pmean`'s is under pmap. Over one device it is the identity.
"""
import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree


def _ordered_mean(tree: Any, axis_name: str) -> Any:
  num_devices = lax.axis_size(axis_name)
  if num_devices == 1:
    return tree
  flat, unravel = ravel_pytree(tree)
  chunk = -(-flat.size // num_devices)
  rows = jnp.pad(flat, (0, chunk * num_devices - flat.size)).reshape(num_devices, chunk)
  # Device d receives chunk d of every device: row e of `received` is device e's.
  received = lax.all_to_all(rows, axis_name, split_axis=0, concat_axis=0)
  # Times the reciprocal, which is what XLA makes of a division by a constant anyway.
  chunk_mean = functools.reduce(operator.add, list(received)) * (1.0 / num_devices)
  return unravel(lax.all_gather(chunk_mean, axis_name, tiled=True)[:flat.size])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def device_mean(tree: Any, axis_name: str) -> Any:
  """The mean over the devices of `axis_name` of each leaf of `tree` (floating leaves, any
  shapes), summed in device order: the same on every device, for any process layout."""
  return _ordered_mean(tree, axis_name)


def _device_mean_forward(tree, axis_name):
  return _ordered_mean(tree, axis_name), None


def _device_mean_backward(axis_name, _, cotangent):
  return (_ordered_mean(cotangent, axis_name),)


device_mean.defvjp(_device_mean_forward, _device_mean_backward)
