"""Shared by the benchmarks: random CIFAR-shaped batches and the median time of a train step."""
import time
from typing import Any, Sequence

import jax
import numpy as np

from sila_jax import methods
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import runs
from sila_jax.training import train_step as train_step_lib


def random_batch(batch_size: int, num_classes: int = 10) -> dict[str, np.ndarray]:
  """{'image': (B, 32, 32, 3) float32, 'label': (B,) int32}, fixed seed."""
  rng = np.random.default_rng(0)
  return {'image': rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
          'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}


def median_step_seconds(parallel: Any, state: Any, batch: dict[str, np.ndarray],
                        steps: int) -> float:
  """Median wall time of `steps` train steps of a parallel wrapper, after two warm-up steps."""
  device_state, device_batch = parallel.put_state(state), parallel.put_batch(batch)
  times = []
  for step in range(steps + 2):
    start = time.perf_counter()
    device_state, _ = jax.block_until_ready(parallel.train_step(device_state, device_batch))
    if step >= 2:  # The first step compiles, the second may still warm caches.
      times.append(time.perf_counter() - start)
  return float(np.median(times))


def config_parallel(config, devices: Sequence[jax.Device]
                    ) -> tuple[parallel_lib.ShardMapParallel, train_step_lib.TrainState]:
  """The project's train step for `config` (its peers; one: a single model) under the shard_map
  wrapper on `devices`, and its initial state."""
  schedule = optimizer_lib.learning_rate_schedule(config, 1000, 100)
  tx = optimizer_lib.create_optimizer(config, schedule)
  image_shape = (32, 32, 3)
  method = methods.create(config, bn_axis_name=parallel_lib.AXIS)
  create = lambda key: train_step_lib.create_train_state(method, tx, key, image_shape)
  step_fn = train_step_lib.make_train_step(method, schedule, config)
  every_run = runs.vmap_step(step_fn, config, batch_axis=None)  # As training runs it.
  return parallel_lib.ShardMapParallel(every_run, devices), runs.init(create, config)


def config_step_seconds(config, batch: dict[str, np.ndarray], steps: int,
                        devices: Sequence[jax.Device]) -> float:
  """Median time of the project's train step for `config` under the shard_map wrapper on
  `devices`; traced and compiled afresh."""
  return median_step_seconds(*config_parallel(config, devices), batch, steps)
