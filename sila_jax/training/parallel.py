"""Two thin data-parallel wrappers around the one per-device train step.

`shard_map` (default): the step runs under `jax.shard_map` inside `jax.jit`; state is a
replicated global array, the batch is split along the `data` mesh axis.
`pmap` (older TPU runtimes): the same step under `jax.pmap`; state carries a leading
device axis. Both give the same numbers.
"""
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'  # The mesh axis the per-device step runs in: gradients and statistics average over it.


def data_mesh(devices: Sequence[jax.Device]) -> Mesh:
  """The 1-D mesh over `devices` whose one axis is AXIS."""
  return Mesh(np.asarray(devices), (AXIS,))


class ShardMapParallel:
  """Per-device step under jax.shard_map + jax.jit over a 1-D `data` mesh."""

  def __init__(self, step_fn: Callable, devices: Sequence[jax.Device]):
    self.mesh = data_mesh(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    # check_vma=False gives the step pmap's semantics: gradients of the replicated
    # parameters stay per-device until the step's own pmean (with it, autodiff would
    # already sum them over devices).
    self.train_step = jax.jit(
        jax.shard_map(step_fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                      check_vma=False),
        donate_argnums=0)

  def put_state(self, state: Any) -> Any:
    """A replicated copy of `state`; the step donates it, so never alias the caller's."""
    return jax.device_put(jax.device_get(state), self.replicated)

  def unreplicate(self, tree: Any) -> Any:
    """One copy of a replicated output (state or metrics) as global arrays."""
    return tree

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's batch (b, ...) -> a global batch split along `data`."""
    return shard_batch(batch, self.sharded)


class PmapParallel:
  """Per-device step under jax.pmap; state and batch carry a leading device axis."""

  def __init__(self, step_fn: Callable, devices: Sequence[jax.Device]):
    self.num_devices = len(devices)
    self.mesh = data_mesh(devices)
    self.stacked = NamedSharding(self.mesh, P(AXIS))
    self.train_step = jax.pmap(step_fn, axis_name=AXIS, devices=list(devices), donate_argnums=0)

  def put_state(self, state: Any) -> Any:
    """`state` copied onto every device: leaves (devices, ...)."""
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(np.broadcast_to(x, (self.num_devices, *np.shape(x))),
                                 self.stacked), jax.device_get(state))

  def unreplicate(self, tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x[0], tree)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """(b, ...) -> (devices, b / devices, ...), one slice per device."""
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x.reshape(self.num_devices, -1, *x.shape[1:]), self.stacked),
        batch)


def shard_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays laid out by `sharding`."""
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


WRAPPERS = {'shard_map': ShardMapParallel, 'pmap': PmapParallel}  # config.parallel -> class.
KINDS = tuple(WRAPPERS)


def create_parallel(kind: str, step_fn: Callable, devices: Sequence[jax.Device]):
  """The wrapper named by `config.parallel` (one of KINDS) around `step_fn`."""
  return WRAPPERS[kind](step_fn, devices)
