"""Throughput of the whole training loop: models x methods x input x dtype.

  python -m benchmarks.throughput [--quick] [--out FILE] [--data_dir DIR] [--budget_s S]

Each cell runs `train_and_evaluate` itself (input, step, logging and the finiteness checks;
no validation) for 3 log intervals of `--steps` steps on a one-device mesh: the first
interval holds the compilation, the other two give images/s, the step time and the share of
the loop's time spent waiting for input ('input_wait'; 0 with the data on the device).
Compile time is the first interval's time beyond its steps' share. Methods: plain, SiLa (one
twin head), DML-2 (two plain peers), ONE, CL-ILR and BYOT at their defaults (ONE and CL-ILR
on CIFAR ResNets only); ratios are step times against plain's. Cells run in
order of importance until `--budget_s` is spent. Without `--data_dir`, a generated ImageFolder
tree of random JPEGs stands in for CIFAR-10 (throughput does not depend on pixel values).
Targets: SiLa at most 1.03x plain's step time, DML-2 at most 2.0x, input wait under 5 %.
"""
import argparse
import itertools
import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import logging
from PIL import Image

from sila_jax import methods
from sila_jax.commands import cli
from sila_jax.configs import default
from sila_jax.data import input_pipeline
from sila_jax.training import metrics
from sila_jax.training import train

MODELS = ('resnet20', 'resnet56', 'resnet18', 'wrn16_4')
METHODS = ('plain', 'sila', 'dml2', 'one', 'clilr', 'byot')  # dml2: plain DML of 2 peers.
INPUTS = ('device', 'host')
DTYPES = ('float32', 'bfloat16')
# Measured first: the cells the targets name, then the rest of the grid.
FIRST = [('resnet18', 'plain', 'device', 'bfloat16'), ('resnet20', 'plain', 'device', 'bfloat16'),
         ('resnet20', 'sila', 'device', 'bfloat16'), ('resnet20', 'dml2', 'device', 'bfloat16'),
         ('resnet20', 'plain', 'host', 'bfloat16')]


def config_method(method: str) -> str:
  """The config.method of a METHODS name: dml2 trains plain peers."""
  return 'plain' if method == 'dml2' else method


def cell_config(model, method, input_kind, dtype, args, data_dir, split):
  """The run of one cell: `--steps`-step log intervals, no validation, one device."""
  config = default.get_config()
  config.update(dataset='folder', data_dir=data_dir, train_split=split, eval_split='train[:1]',
                model=model, width=args.width, dtype=dtype, on_device=input_kind == 'device',
                batch_size=args.batch_size, eval_batch_size=args.batch_size,
                num_train_steps=3 * args.steps, log_every_steps=args.steps, eval_every_steps=0,
                checkpoint_every_steps=10 * args.steps, distributed='off')
  config.method = config_method(method)
  config.dml.num_peers = 2 if method == 'dml2' else 1
  return config


def measure(config, workdir) -> dict[str, float]:
  """images/s, step ms, input wait and compile seconds of one run of `config`."""
  train.train_and_evaluate(config, workdir)
  records = metrics.read(workdir, metrics.TRAIN)
  steady = records[1:]
  images_per_sec = float(np.mean([r['images_per_sec'] for r in steady]))  # Of every run.
  step_seconds = config.batch_size * config.num_runs / images_per_sec
  first_interval = (config.log_every_steps * config.batch_size * config.num_runs
                    / records[0]['images_per_sec'])
  return {'images_per_sec': images_per_sec, 'step_ms': 1e3 * step_seconds,
          'input_wait_fraction': float(np.mean([r['input_wait'] for r in steady])),
          'compile_s': first_interval - config.log_every_steps * step_seconds}


def random_folder(root: str, per_class: int) -> str:
  """root/train/<class>/<i>.jpg: 10 classes of random 32x32 JPEGs."""
  rng = np.random.default_rng(0)
  for c in range(10):
    os.makedirs(os.path.join(root, 'train', f'class_{c}'))
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
          os.path.join(root, 'train', f'class_{c}', f'{i:04d}.jpg'))
  return root


class CachedSources:
  """Decodes each split once for all cells (the loop itself is what is timed)."""

  def __init__(self):
    self._open, self._sources = input_pipeline.open_source, {}

  def __call__(self, config, split):
    key = (config.data_dir, split)
    if key not in self._sources:
      source = self._open(config, split)
      images, labels = source.read(np.arange(source.num_examples))
      source.read = lambda indices, images=images, labels=labels: (images[indices],
                                                                   labels[indices])
      self._sources[key] = source
    return self._sources[key]


def method_takes(method: str, model: str) -> bool:
  """Whether `method` (a METHODS name) trains `model`: its config checks find nothing."""
  config = default.get_config()
  config.update(model=model, method=config_method(method))
  return not list(methods.METHODS[config.method].problems(config))


def cells(args):
  """The grid's cells, FIRST first; only those whose method takes the model (ONE and CL-ILR
  take the CIFAR ResNets)."""
  grid = [c for c in itertools.product(args.models, args.methods, args.inputs, args.dtypes)
          if method_takes(c[1], c[0])]
  return [c for c in FIRST if c in grid] + [c for c in grid if c not in FIRST]


def ratios(results):
  """{cell: (a method's step time) / plain's} for cells whose plain twin was measured."""
  step = {(r['model'], r['method'], r['input'], r['dtype']): r['step_ms'] for r in results}
  return {cell: ms / step[(cell[0], 'plain', *cell[2:])] for cell, ms in step.items()
          if cell[1] != 'plain' and (cell[0], 'plain', *cell[2:]) in step}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='ResNet-20 at width 0.25, batch 32, 2-step intervals (CPU check)')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--inputs', default=','.join(INPUTS))
  parser.add_argument('--dtypes', default=','.join(DTYPES))
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--batch_size', type=int, default=512)
  parser.add_argument('--steps', type=int, default=50, help='steps per log interval')
  parser.add_argument('--data_dir', default='', help='ImageFolder root (CIFAR-10 JPEGs)')
  parser.add_argument('--split', default='train[:-500]')
  parser.add_argument('--budget_s', type=float, default=float('inf'),
                      help='start no cell after this many seconds')
  parser.add_argument('--out', default='', help='write one JSON object per cell here')
  args = parser.parse_args()
  if args.quick:
    args.models, args.width, args.batch_size, args.steps = 'resnet20', 0.25, 32, 2
  for name in ('models', 'methods', 'inputs', 'dtypes'):
    setattr(args, name, tuple(getattr(args, name).split(',')))
  logging.set_verbosity(logging.WARNING)
  cli.quiet_library_logs()
  input_pipeline.open_source = CachedSources()

  device = jax.devices()[0]
  print(f'{device.platform} {device.device_kind}, jax {jax.__version__}, batch '
        f'{args.batch_size}, width {args.width}, {args.steps}-step intervals', flush=True)
  header = (f"{'model':<9} {'method':<6} {'input':<6} {'dtype':<8} {'images/s':>10} "
            f"{'step ms':>8} {'wait':>6} {'compile s':>9}")
  start, results = time.perf_counter(), []
  with tempfile.TemporaryDirectory() as tmp:
    data_dir, split = args.data_dir, args.split
    if not data_dir:
      data_dir = random_folder(os.path.join(tmp, 'data'), per_class=max(
          8, -(-4 * args.batch_size // 10)))
      split = 'train'
    print(header, flush=True)
    for n, (model, method, input_kind, dtype) in enumerate(cells(args)):
      if time.perf_counter() - start > args.budget_s:
        print(f'budget of {args.budget_s:.0f} s spent: {len(cells(args)) - n} cells not run')
        break
      config = cell_config(model, method, input_kind, dtype, args, data_dir, split)
      figures = measure(config, os.path.join(tmp, f'run{n}'))
      row = {'model': model, 'width': args.width, 'method': method, 'input': input_kind,
             'dtype': dtype, 'batch_size': args.batch_size, 'platform': device.platform,
             'device_kind': device.device_kind, **figures}
      results.append(row)
      print(f"{model:<9} {method:<6} {input_kind:<6} {dtype:<8} {row['images_per_sec']:>10.0f} "
            f"{row['step_ms']:>8.2f} {row['input_wait_fraction']:>6.1%} "
            f"{row['compile_s']:>9.1f}", flush=True)
      if args.out:
        with open(args.out, 'a') as f:
          f.write(json.dumps(row) + '\n')
  print('\nstep time against plain (targets: SiLa <= 1.03x, DML-2 <= 2.0x):')
  for (model, method, input_kind, dtype), ratio in ratios(results).items():
    print(f'  {model} {method}/plain, {input_kind} input, {dtype}: x{ratio:.3f}')


if __name__ == '__main__':
  main()
