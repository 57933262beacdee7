"""DY-ResNet-20 against ResNet-20: train-step throughput, forward FLOPs and parameter counts.

  python -m benchmarks.dynamic_conv [--batch_size 128] [--steps 10] [--width 1.0]

The project's own train step (plain cross-entropy, SGD, under the shard_map wrapper) on one
device, on random CIFAR-shaped batches. Throughput is the median over the timed steps, after
two warm-up steps; run it on a quiet machine.
"""
import argparse

import jax

from benchmarks import timing
from sila_jax import methods
from sila_jax.configs import default
from sila_jax.methods import peers
from sila_jax.models import model as model_lib
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import runs
from sila_jax.training import train_step as train_step_lib


def measure(name: str, batch_size: int, steps: int, width: float) -> dict[str, float]:
  """Parameters, forward FLOPs and median train-step images/s of model `name`."""
  config = default.get_config()
  config.update(model=name, width=width, batch_size=batch_size)
  config.sila.enabled = False
  method = methods.create(config, bn_axis_name=parallel_lib.AXIS, steps_per_epoch=100)
  schedule = optimizer_lib.learning_rate_schedule(config, 1000, 100)
  tx = optimizer_lib.create_optimizer(config, schedule)
  state = runs.init(lambda key: train_step_lib.create_train_state(method, tx, key, (32, 32, 3)),
                    config)
  batch = timing.random_batch(batch_size)

  # XLA's count includes DynamicConv's multiplications by padding zeros and its per-tap adds,
  # which it leaves out for a static conv: mixing the kernels alone adds about 3% to ResNet-20.
  plain = model_lib.create_model(config)
  variables = peers.peer_variables(
      config, runs.take({'params': state.params, 'batch_stats': state.batch_stats}, 0), 0)
  forward = jax.jit(lambda variables, images: plain.apply(variables, images, train=False))
  flops = forward.lower(variables, batch['image']).compile().cost_analysis()['flops']

  parallel = parallel_lib.ShardMapParallel(
      runs.vmap_step(train_step_lib.make_train_step(method, schedule, config), config,
                     batch_axis=None), jax.devices()[:1])
  return dict(params=model_lib.count_params(variables['params']), flops=flops,
              images_per_s=batch_size / timing.median_step_seconds(parallel, state, batch, steps))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10, help='timed steps after 2 warm-up ones')
  parser.add_argument('--width', type=float, default=1.0)
  args = parser.parse_args()
  print(f'{jax.devices()[0].platform}, batch {args.batch_size}, width {args.width}, '
        f'median of {args.steps} steps')
  print(f'{"model":<12} {"params":>10} {"fwd GFLOPs":>11} {"train img/s":>12}')
  results = {}
  for name in ('resnet20', 'dy_resnet20'):
    results[name] = r = measure(name, args.batch_size, args.steps, args.width)
    print(f'{name:<12} {r["params"]:>10,} {r["flops"] / 1e9:>11.2f} {r["images_per_s"]:>12.1f}',
          flush=True)
  static, dynamic = results['resnet20'], results['dy_resnet20']
  print(f'DY-ResNet-20 vs ResNet-20: FLOPs +{100 * (dynamic["flops"] / static["flops"] - 1):.1f}%, '
        f'params x{dynamic["params"] / static["params"]:.2f}, '
        f'throughput x{dynamic["images_per_s"] / static["images_per_s"]:.2f}')


if __name__ == '__main__':
  main()
