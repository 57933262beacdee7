"""Shared by the benchmarks: random CIFAR-shaped batches and the median time of a train step."""
import time
from typing import Any, Callable

import jax
import numpy as np


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
