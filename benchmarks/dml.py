"""DML: the train step of K = 2 homogeneous peers against one model's, on the same batch.

  python -m benchmarks.dml [--model resnet20] [--batch_size 128] [--steps 10] [--sila]

The project's own train step (`train_step`, one peer against two, SGD) under the shard_map
wrapper on one device, on a random CIFAR-shaped batch. Times are medians over the timed
steps, after two warm-up steps; run it on a quiet machine. Target: the pair at most 2.0x.
"""
import argparse

import jax

from benchmarks import timing
from sila_jax.configs import default


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10, help='timed steps after 2 warm-up ones')
  parser.add_argument('--sila', action='store_true', help='one Siamese head per model')
  args = parser.parse_args()
  config = default.get_config()
  config.update(model=args.model, batch_size=args.batch_size)
  config.sila.enabled = args.sila
  batch = timing.random_batch(args.batch_size)
  print(f'{jax.devices()[0].platform}, {args.model}, SiLa {"on" if args.sila else "off"}, '
        f'batch {args.batch_size}, median of {args.steps} steps')
  one = timing.config_step_seconds(config, batch, args.steps, jax.devices()[:1])
  print(f'one model:   {1e3 * one:8.1f} ms/step  {args.batch_size / one:7.1f} images/s', flush=True)
  config.dml.num_peers = 2
  pair = timing.config_step_seconds(config, batch, args.steps, jax.devices()[:1])
  print(f'two peers:   {1e3 * pair:8.1f} ms/step  {args.batch_size / pair:7.1f} images/s')
  print(f'pair / one: x{pair / one:.2f} (target: at most x2.00)')


if __name__ == '__main__':
  main()
