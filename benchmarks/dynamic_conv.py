"""DY-ResNet-20 against ResNet-20: train-step throughput, forward FLOPs and parameter counts.

  python -m benchmarks.dynamic_conv [--batch_size 128] [--steps 10] [--width 1.0]

One device, random CIFAR-shaped data (32x32x3, 10 classes), a jitted step of plain
cross-entropy + SGD. Throughput is the median over the timed steps, after two warm-up steps.
"""
import argparse
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from sila_jax import backbones
from sila_jax import model as model_lib

NUM_CLASSES = 10


class Classifier(nn.Module):
  """images (B, 32, 32, 3) -> logits (B, NUM_CLASSES): a backbone and a linear head."""
  backbone: nn.Module

  @nn.compact
  def __call__(self, images, train: bool):
    features, _ = self.backbone(images, train=train)
    return nn.Dense(NUM_CLASSES)(features)


def measure(name: str, batch_size: int, steps: int, width: float) -> dict[str, float]:
  """Parameters, forward FLOPs and median train-step images/s of backbone `name`."""
  model = Classifier(backbones.create_backbone(name, width=width))
  images = jax.random.normal(jax.random.PRNGKey(0), (batch_size, 32, 32, 3))
  labels = jax.random.randint(jax.random.PRNGKey(1), (batch_size,), 0, NUM_CLASSES)
  variables = model.init(jax.random.PRNGKey(2), images, train=False)
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(variables['params'])

  # XLA's count includes DynamicConv's multiplications by padding zeros and its per-tap adds,
  # which it leaves out for a static conv: mixing the kernels alone adds about 3% to ResNet-20.
  forward = jax.jit(lambda variables, images: model.apply(variables, images, train=False))
  flops = forward.lower(variables, images).compile().cost_analysis()['flops']

  @jax.jit
  def train_step(variables, opt_state, images, labels):
    def loss_fn(params):
      logits, updates = model.apply({**variables, 'params': params}, images, train=True,
                                    mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates
    grads, updates = jax.grad(loss_fn, has_aux=True)(variables['params'])
    deltas, opt_state = tx.update(grads, opt_state)
    return {'params': optax.apply_updates(variables['params'], deltas), **updates}, opt_state

  times = []
  for step in range(steps + 2):
    start = time.perf_counter()
    variables, opt_state = jax.block_until_ready(
        train_step(variables, opt_state, images, labels))
    if step >= 2:  # The first step compiles, the second may still warm caches.
      times.append(time.perf_counter() - start)
  return dict(params=model_lib.count_params(variables['params']), flops=flops,
              images_per_s=batch_size / np.median(times))


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
