"""Several processes, one run: JAX's distributed runtime, and how the processes agree.

`initialize(config.distributed)` joins the processes of a Cloud TPU slice, a SLURM job, or
a launch by hand (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) into one JAX
runtime before any device is touched; `jax.devices()` then lists every process's devices and
the training mesh spans them. On CPU the processes all-reduce through gloo (JAX's default).
The helpers below give every process the same answer; with one process they cost nothing.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sila_jax.errors import ConfigError

MODES = ('auto', 'on', 'off')


def launcher() -> str | None:
  """The multi-process launch this process's environment describes, or None."""
  if 'JAX_COORDINATOR_ADDRESS' in os.environ:
    return 'JAX_COORDINATOR_ADDRESS'
  # srun sets the step's variables; a batch script itself is one process.
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_STEP_NODELIST' in os.environ:
    return 'SLURM'
  if importlib.util.find_spec('libtpu') is not None:  # jax[tpu]: a Cloud TPU VM.
    return 'Cloud TPU'
  return None


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f'{name}={value!r} is not an integer.') from None


def initialize(mode: str) -> None:
  """Starts JAX's distributed runtime if `mode` (config.distributed) asks for it.

  'auto': when `launcher()` finds a launch; 'on': always, JAX finding the other processes
  from the environment; 'off': never. Call it before anything touches a device. Processes
  other than 0 then log warnings and errors only.
  """
  if mode not in MODES:
    raise ConfigError(f"Unknown distributed {mode!r}; choose one of {', '.join(MODES)}.")
  found = launcher()
  if mode == 'off' or (mode == 'auto' and found is None):
    return
  try:
    jax.distributed.initialize(num_processes=_env_int('JAX_NUM_PROCESSES'),
                               process_id=_env_int('JAX_PROCESS_ID'))
  except ValueError as e:  # JAX found no coordinator, process count or id.
    launch = f' ({found})' if found else ''
    raise ConfigError(
        f'distributed={mode!r}{launch}: JAX could not find the other processes ({e}). Launch '
        'with srun, on every host of a Cloud TPU slice, or with JAX_COORDINATOR_ADDRESS, '
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID set; or set distributed='off'.") from e
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX distributed runtime (%s): %d processes, %d devices, %d in this process.',
               found or 'cluster detected by JAX', jax.process_count(), jax.device_count(),
               jax.local_device_count())


def max_over_processes(value: int) -> int:
  """The largest of every process's `value`."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int64(value))))


def all_processes(flag: bool) -> bool:
  """True if `flag` is True in every process."""
  return max_over_processes(int(not flag)) == 0


def barrier(name: str) -> None:
  """Returns in every process once all have reached the barrier `name`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class AnyProcess:
  """Whether a flag (SIGTERM seen) is set in any process, agreed one call late.

  Each call starts an all-reduce of this call's local flag on the mesh and returns the
  previous call's result. The host waits only for what was queued before that all-reduce
  (the previous step), so it stays one step ahead of the devices; and every process gets the
  same answer at the same call. With one process the flag itself is returned at once.
  """

  def __init__(self, mesh: Mesh):
    self._sharding = NamedSharding(mesh, P(mesh.axis_names))
    self._num_local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    self._any = jax.jit(jnp.any, out_shardings=NamedSharding(mesh, P()))
    self._pending = None

  def __call__(self, flag: bool) -> bool:
    if jax.process_count() == 1:
      return flag
    previous, self._pending = self._pending, self._any(jax.make_array_from_process_local_data(
        self._sharding, np.full(self._num_local, flag)))
    return previous is not None and bool(previous)
