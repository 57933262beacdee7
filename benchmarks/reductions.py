"""The cost of fixed-order cross-device means: the train step with `collectives.device_mean`
(the project's) against the same step with `lax.pmean` in its place.

  python -m benchmarks.reductions [--model resnet20] [--batch_size 128] [--steps 10]

The project's SiLa train step under the shard_map wrapper on every device JAX sees (for fake
CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=8), on a random CIFAR-shaped
batch; medians over the timed steps after two warm-up steps. `device_mean` averages the
gradients and metrics once per step and each BatchNorm's statistics (forward and backward).
"""
import argparse
import contextlib
from unittest import mock

import jax

from benchmarks import timing
from sila_jax.configs import default
from sila_jax.training import collectives


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10, help='timed steps after 2 warm-up ones')
  args = parser.parse_args()
  config = default.get_config()
  config.update(model=args.model, batch_size=args.batch_size)
  batch = timing.random_batch(args.batch_size)
  print(f'{jax.device_count()} {jax.devices()[0].platform} devices, {args.model} with SiLa, '
        f'global batch {args.batch_size}, median of {args.steps} steps')
  times = {}
  for name, patch in (('device_mean', contextlib.nullcontext()),
                      ('lax.pmean', mock.patch.object(collectives, 'device_mean',
                                                      jax.lax.pmean))):
    with patch:
      times[name] = timing.config_step_seconds(config, batch, args.steps, jax.devices())
    print(f'{name:12s} {1e3 * times[name]:8.1f} ms/step  '
          f'{args.batch_size / times[name]:7.1f} images/s', flush=True)
  print(f'device_mean / lax.pmean: x{times["device_mean"] / times["lax.pmean"]:.3f}')


if __name__ == '__main__':
  main()
