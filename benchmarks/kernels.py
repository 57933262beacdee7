"""Every form of each selectable kernel (config.kernels), forward + backward on this backend.

  python -m benchmarks.kernels [--batch_size 128] [--repeats 10] [--quick] [--out FILE]

kernels.peer_conv ('sliced', 'grouped'): two DML peers' ResNet-20 first-stage convolution
(3x3, 32x32x16 -> 16, each peer its own input) under vmap, and the project's two-peer
ResNet-20 train step. kernels.dynamic_conv ('taps', 'grouped'): a DynamicConv (3x3,
32x32x16 -> 16, 4 kernels), and the DY-ResNet-20 train step. Each cell is compiled first
(its compile time is reported apart), then run twice to warm up; the time is the median of
the timed runs. A layer's run is jax.grad of the sum of its output; a train step is SGD
under the shard_map wrapper on one device, SiLa off. The fastest form on a backend is
what 'auto' should pick there (model.AUTO_KERNELS). --quick: the layers only, batch 4,
3 runs (a smoke test: on CPU a train step compiles for 10-30 s, and a grouped form runs for
seconds at batch 128). --out FILE: one JSON object per cell.
"""
import argparse
import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from sila_jax.configs import default
from sila_jax.models import conv
from sila_jax.models import dynamic_conv

WARM_UP = 2
SETTINGS = dict(window_strides=(1, 1), padding=[(1, 1), (1, 1)],
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def compiled_seconds(jitted: Callable, args: tuple[Any, ...], repeats: int,
                     carry: bool = False) -> tuple[float, float]:
  """(compile time, median run time of `repeats` runs after WARM_UP) of jitted(*args); with
  `carry` each run's first output is the next run's first argument (a donated train state)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_seconds, times = time.perf_counter() - start, []
  for run in range(WARM_UP + repeats):
    start = time.perf_counter()
    outputs = jax.block_until_ready(compiled(*args))
    if run >= WARM_UP:
      times.append(time.perf_counter() - start)
    if carry:
      args = (outputs[0], *args[1:])
  return compile_seconds, float(np.median(times))


def peer_conv_layer(form: str, batch_size: int, repeats: int) -> tuple[float, float]:
  """Two peers' 3x3 convolution, (2, B, 32, 32, 16) -> 16, vmapped over peers."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  images = jax.random.normal(keys[0], (2, batch_size, 32, 32, 16))
  kernels = jax.random.normal(keys[1], (2, 3, 3, 16, 16))
  peers_conv = jax.vmap(lambda x, w: conv.FORMS[form](x, w, **SETTINGS))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(peers_conv(x, w)), argnums=(0, 1)))
  return compiled_seconds(grad, (images, kernels), repeats)


def dynamic_conv_layer(form: str, batch_size: int, repeats: int) -> tuple[float, float]:
  """A DynamicConv of 4 kernels, (B, 32, 32, 16) -> 16."""
  layer = dynamic_conv.DynamicConv(16, form=form)
  images = jax.random.normal(jax.random.PRNGKey(0), (batch_size, 32, 32, 16))
  params = layer.init(jax.random.PRNGKey(1), images, 1.0)['params']
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply({'params': p}, x, 1.0)),
                          argnums=(0, 1)))
  return compiled_seconds(grad, (params, images), repeats)


def train_step(kernel: str, form: str, batch_size: int, repeats: int) -> tuple[float, float]:
  """The project's train step with kernels.<kernel> = form: two ResNet-20 peers for
  peer_conv, one DY-ResNet-20 for dynamic_conv."""
  config = default.get_config()
  config.batch_size = batch_size
  config.sila.enabled = False
  if kernel == 'peer_conv':
    config.dml.num_peers = 2
  else:
    config.model = 'dy_resnet20'
  config.kernels[kernel] = form
  parallel, state = timing.config_parallel(config, jax.devices()[:1])
  args = (parallel.put_state(state), parallel.put_batch(timing.random_batch(batch_size)))
  return compiled_seconds(parallel.train_step, args, repeats, carry=True)


CELLS = {  # (kernel, what) -> (its forms, shape in words, timer(form, batch_size, repeats)).
    ('peer_conv', 'layer'): (conv.FORMS, '2 peers x 32x32x16->16', peer_conv_layer),
    ('peer_conv', 'train_step'): (conv.FORMS, 'resnet20 x 2 peers',
                                  lambda *args: train_step('peer_conv', *args)),
    ('dynamic_conv', 'layer'): (dynamic_conv.FORMS, 'DynamicConv 32x32x16->16, K=4',
                                dynamic_conv_layer),
    ('dynamic_conv', 'train_step'): (dynamic_conv.FORMS, 'dy_resnet20',
                                     lambda *args: train_step('dynamic_conv', *args)),
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10, help='timed runs after 2 warm-up ones')
  parser.add_argument('--quick', action='store_true',
                      help='layers only, batch 4, 3 timed runs')
  parser.add_argument('--out', help='write one JSON object per cell to this file')
  args = parser.parse_args(argv)
  batch_size, repeats = (4, 3) if args.quick else (args.batch_size, args.repeats)
  device = jax.devices()[0]
  print(f'{jax.default_backend()} ({device.device_kind}), batch {batch_size}, forward + '
        f'backward, median of {repeats} runs')
  print(f'{"kernel":<13} {"form":<8} {"shape":<31} {"compile s":>9} {"ms":>9}')
  records = []
  for (kernel, what), (forms, shape, timer) in CELLS.items():
    if args.quick and what == 'train_step':
      continue
    for form in forms:
      compile_seconds, seconds = timer(form, batch_size, repeats)
      records.append(dict(backend=jax.default_backend(), device_kind=device.device_kind,
                          kernel=kernel, what=what, form=form, shape=shape,
                          batch_size=batch_size, compile_s=compile_seconds, ms=1e3 * seconds))
      print(f'{kernel:<13} {form:<8} {shape:<31} {compile_seconds:>9.2f} {1e3 * seconds:>9.1f}',
            flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      f.writelines(json.dumps(record) + '\n' for record in records)


if __name__ == '__main__':
  main()
