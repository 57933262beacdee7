"""R runs trained as one computation against R runs trained one after another.

  python -m benchmarks.batched_runs [--quick] [--num_runs 4] [--method sila] [--out FILE]

Times the whole training loop (benchmarks/throughput.py's `measure`: compile apart) of one
run and of `--num_runs` runs batched (config.num_runs), same model, batch and method, one
device. R separate runs take R times one run's step time; the speed-up is that over the
batched step time.
"""
import argparse
import json
import os
import tempfile

import jax
from absl import logging

from benchmarks import throughput
from sila_jax import checkpoint
from sila_jax import input_pipeline


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='ResNet-20 at width 0.25, batch 32, 2-step intervals (CPU check)')
  parser.add_argument('--num_runs', type=int, default=4)
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--method', default='sila', choices=throughput.METHODS)
  parser.add_argument('--dtype', default='float32', choices=throughput.DTYPES)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=20, help='steps per log interval')
  parser.add_argument('--peer_conv', default='auto', help='config.kernels.peer_conv: how the '
                      "runs' convolutions run under vmap")
  parser.add_argument('--out', default='', help='append one JSON object here')
  args = parser.parse_args()
  if args.quick:
    args.width, args.batch_size, args.steps = 0.25, 32, 2
  logging.set_verbosity(logging.WARNING)
  checkpoint.quiet_orbax_logs()
  input_pipeline.open_source = throughput.CachedSources()
  device = jax.devices()[0]
  figures = {}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = throughput.random_folder(os.path.join(tmp, 'data'),
                                        per_class=max(8, -(-4 * args.batch_size // 10)))
    for num_runs in (1, args.num_runs):
      config = throughput.cell_config(args.model, args.method, 'device', args.dtype, args,
                                      data_dir, 'train')
      config.num_runs = num_runs
      config.kernels.peer_conv = args.peer_conv
      figures[num_runs] = throughput.measure(config, os.path.join(tmp, f'runs_{num_runs}'))
  one, many = figures[1]['step_ms'], figures[args.num_runs]['step_ms']
  row = {'model': args.model, 'width': args.width, 'method': args.method, 'dtype': args.dtype,
         'peer_conv': args.peer_conv,
         'batch_size': args.batch_size, 'num_runs': args.num_runs, 'platform': device.platform,
         'device_kind': device.device_kind, 'one_run_step_ms': one, 'batched_step_ms': many,
         'speedup': args.num_runs * one / many,
         'one_run_compile_s': figures[1]['compile_s'],
         'batched_compile_s': figures[args.num_runs]['compile_s']}
  print(f'{device.platform} {device.device_kind}, jax {jax.__version__}: {args.model} at width '
        f'{args.width}, {args.method}, {args.dtype}, batch {args.batch_size} per run, '
        f'kernels.peer_conv={args.peer_conv}')
  print(f'  1 run: {one:.1f} ms a step; {args.num_runs} runs batched: {many:.1f} ms a step '
        f'({args.num_runs} separate: {args.num_runs * one:.1f} ms); speed-up '
        f'x{row["speedup"]:.2f}; compile {row["one_run_compile_s"]:.1f} s vs '
        f'{row["batched_compile_s"]:.1f} s')
  if args.out:
    with open(args.out, 'a') as f:
      f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
  main()
