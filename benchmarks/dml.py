"""DML: the train step of K = 2 homogeneous peers against one model's, on the same batch.

  python -m benchmarks.dml [--model resnet20] [--batch_size 128] [--steps 10] [--sila]

The project's own train steps (`train_step` and `peer_train_step`, SGD) under the shard_map
wrapper on one device, on a random CIFAR-shaped batch. Times are medians over the timed
steps, after two warm-up steps; run it on a quiet machine. Target: the pair at most 2.0x.
"""
import argparse

import jax

from benchmarks import timing
from configs import default
from sila_jax import model as model_lib
from sila_jax import optimizer as optimizer_lib
from sila_jax import parallel as parallel_lib
from sila_jax import peers
from sila_jax import train_step as train_step_lib


def step_seconds(config, batch, steps: int) -> float:
  """Median train-step time of `config`: one model, or its DML peers."""
  schedule = optimizer_lib.learning_rate_schedule(config, 1000, 100)
  tx = optimizer_lib.create_optimizer(config, schedule)
  rng, image_shape = jax.random.PRNGKey(0), (32, 32, 3)
  if peers.is_dml(config):
    groups = peers.create_groups(config, bn_axis_name=train_step_lib.AXIS)
    state = train_step_lib.create_peer_train_state(groups, tx, rng, image_shape)
    step_fn = train_step_lib.make_peer_train_step(groups, tx, schedule, config)
  else:
    model = model_lib.create_model(config, bn_axis_name=train_step_lib.AXIS)
    state = train_step_lib.create_train_state(model, tx, rng, image_shape)
    step_fn = train_step_lib.make_train_step(model, tx, schedule, config)
  parallel = parallel_lib.ShardMapParallel(step_fn, jax.devices()[:1])
  return timing.median_step_seconds(parallel, state, batch, steps)


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
  one = step_seconds(config, batch, args.steps)
  print(f'one model:   {1e3 * one:8.1f} ms/step  {args.batch_size / one:7.1f} images/s', flush=True)
  config.dml.num_peers = 2
  pair = step_seconds(config, batch, args.steps)
  print(f'two peers:   {1e3 * pair:8.1f} ms/step  {args.batch_size / pair:7.1f} images/s')
  print(f'pair / one: x{pair / one:.2f} (target: at most x2.00)')


if __name__ == '__main__':
  main()
