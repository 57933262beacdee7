"""Throughput of R runs trained as one computation, by R, method and form of the convolutions.

  python -m benchmarks.batched_runs [--quick] [--num_runs 1,4,8,16,32] [--methods plain,sila]
      [--peer_convs sliced,grouped] [--batch_size 128] [--dtype bfloat16] [--steps 20]
      [--budget_s S] --out FILE.jsonl

Each cell trains R runs as one computation (config.num_runs = R, the run axis of
sila_jax/training/runs.py) through the whole training loop, timed by benchmarks/throughput.py's
`measure` (3 log intervals of `--steps` steps; the first holds the compilation), at
`--batch_size` images per run, with the run axis' convolutions in one form
(config.kernels.peer_conv: 'sliced', one convolution per run, or 'grouped', one grouped
convolution; sila_jax/models/conv.py). Its row, appended to FILE as soon as it is measured:
device_kind, platform, jax, model, width, method, dtype, batch_size (per run), num_runs,
peer_conv, step_ms, images_per_sec (of all runs together: R x batch / step time), compile_s,
and steps and wall_s (the cell's whole time, from which later cells' cost is estimated).

A cell already in FILE (same device_kind, model, width, method, dtype, batch_size, num_runs
and peer_conv) is not measured again, so a sweep cut off by `--budget_s` goes on where it
stopped when called again with the same FILE. Cells run in order of what they tell: the
smallest R (1) of every method in the first form (at R = 1 both forms are one ordinary
convolution), then the largest R in every form, then the other R from the largest down. A
cell starts only if its estimated time (estimate_s) fits in what is left of `--budget_s`,
counted from the program's start; one that does not is skipped and the next tried. SIGTERM
stops the sweep (exit 143) with the cells measured kept. At the end a table gives, per method
and form, images/s by R with the ratio to R = 1, and the SiLa/plain step-time ratio by R,
over every matching row of FILE.
--quick (CPU, about a minute): ResNet-20 at width 0.25, batch 16 per run, 2-step intervals,
R in (1, 2), plain and sila, the sliced form.
"""
import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
import warnings

import jax
from absl import logging

from benchmarks import throughput
from sila_jax.commands import cli
from sila_jax.data import input_pipeline
from sila_jax.models import conv
from sila_jax.training import metrics

# What identifies a cell in FILE: a row with the same values is not measured again.
KEY = ('device_kind', 'model', 'width', 'method', 'dtype', 'batch_size', 'num_runs',
       'peer_conv')


class Stopped(BaseException):
  """SIGTERM arrived (the campaign's time limit): the cells measured so far stand."""


def _stop(signum, frame):
  del signum, frame
  raise Stopped


def cells(num_runs, methods, peer_convs):
  """(R, method, peer_conv) in the order they are measured."""
  first = [(min(num_runs), method, peer_convs[0]) for method in methods]
  largest = [(max(num_runs), method, form) for form in peer_convs for method in methods]
  rest = [(r, method, form) for r in sorted(num_runs, reverse=True) for form in peer_convs
          for method in methods]
  return list(dict.fromkeys(first + largest + rest))


def fixed_s(row) -> float:
  """Seconds of a measured cell beyond its timed steps: compilation and set-up (its compile
  time for a row without wall_s)."""
  if 'wall_s' not in row:
    return row['compile_s']
  return max(row['wall_s'] - 3 * row['steps'] * row['step_ms'] / 1e3, 0.0)


def estimate_s(num_runs, peer_conv, rows, steps) -> float:
  """Seconds a cell of R = `num_runs` in form `peer_conv` will take, from measured `rows`.

  Uses rows of the same form, and R = 1 of any form (both forms are then one plain
  convolution), the slower method at each R. Between two measured R, the fixed cost and the
  step time are interpolated linearly in R; above them the fixed cost follows the line
  through the two largest (flat with one) and the step time grows as R (an upper bound: a
  batched step is at most R one-run steps); below them, the smallest's. 0 with no rows.
  """
  points = {}  # R -> (fixed s, step ms)
  for row in rows:
    if row['peer_conv'] == peer_conv or row['num_runs'] == 1:
      old = points.get(row['num_runs'], (0.0, 0.0))
      points[row['num_runs']] = (max(old[0], fixed_s(row)), max(old[1], row['step_ms']))
  if not points:
    return 0.0
  rs = sorted(points)
  if num_runs in points:
    fixed, step_ms = points[num_runs]
  elif num_runs < rs[0]:
    fixed, step_ms = points[rs[0]]
  elif num_runs > rs[-1]:
    top = points[rs[-1]]
    slope = 0.0
    if len(rs) > 1:
      below = points[rs[-2]]
      slope = max((top[0] - below[0]) / (rs[-1] - rs[-2]), 0.0)
    fixed = top[0] + slope * (num_runs - rs[-1])
    step_ms = top[1] * num_runs / rs[-1]
  else:
    lo = max(r for r in rs if r < num_runs)
    hi = min(r for r in rs if r > num_runs)
    t = (num_runs - lo) / (hi - lo)
    fixed, step_ms = (a + t * (b - a) for a, b in zip(points[lo], points[hi]))
  return fixed + 3 * steps * step_ms / 1e3


def read_rows(path):
  """The cells of FILE, [] if it does not exist; a cut-off line, or a row of another
  program, is left out."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and {*KEY, 'step_ms', 'images_per_sec', 'compile_s'} <= set(row):
        rows.append(row)
  return rows


def table(rows, num_runs, methods, peer_convs) -> str:
  """images/s by R (ratio to R = 1) per method and form, then SiLa/plain step time by R.

  A form without its own R = 1 row is compared with the other form's (the same computation).
  """
  by = {(r['num_runs'], r['method'], r['peer_conv']): r for r in rows}
  rs = sorted(num_runs)
  lines = [f'{"method":<6} {"form":<8}' + ''.join(f'{"R=" + str(r):>17}' for r in rs)]
  for form in peer_convs:
    for method in methods:
      ones = [by[(1, method, f)] for f in (form, *peer_convs) if (1, method, f) in by]
      texts = []
      for r in rs:
        row, text = by.get((r, method, form)), '-'
        if row:
          text = f'{row["images_per_sec"]:.0f}'
          if ones:
            text += f' (x{row["images_per_sec"] / ones[0]["images_per_sec"]:.2f})'
        texts.append(f'{text:>17}')
      lines.append(f'{method:<6} {form:<8}' + ''.join(texts))
  if 'plain' in methods and 'sila' in methods:
    lines += ['', 'SiLa/plain step time:', f'{"form":<15}' + ''.join(f'{"R=" + str(r):>17}'
                                                                     for r in rs)]
    for form in peer_convs:
      texts = []
      for r in rs:
        plain, sila = by.get((r, 'plain', form)), by.get((r, 'sila', form))
        text = f'x{sila["step_ms"] / plain["step_ms"]:.3f}' if plain and sila else '-'
        texts.append(f'{text:>17}')
      lines.append(f'{form:<15}' + ''.join(texts))
  return '\n'.join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='ResNet-20 at width 0.25, batch 16, 2-step intervals, R in 1,2, '
                      'plain and sila, sliced (CPU check)')
  parser.add_argument('--num_runs', default='1,4,8,16,32', help='R values, comma-separated')
  parser.add_argument('--methods', default='plain,sila')
  parser.add_argument('--peer_convs', default='sliced,grouped',
                      help="config.kernels.peer_conv forms, the first also at R = 1")
  parser.add_argument('--model', default='resnet20', choices=throughput.MODELS)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--batch_size', type=int, default=128, help='images per run per step')
  parser.add_argument('--dtype', default='bfloat16', choices=throughput.DTYPES)
  parser.add_argument('--steps', type=int, default=20, help='steps per log interval')
  parser.add_argument('--budget_s', type=float, default=math.inf,
                      help='start no cell whose estimated time would end past this')
  parser.add_argument('--out', required=True, help='JSON lines: read, then appended to')
  args = parser.parse_args(argv)
  if args.quick:
    args.num_runs, args.methods, args.peer_convs = '1,2', 'plain,sila', 'sliced'
    args.width, args.batch_size, args.steps = 0.25, 16, 2
  try:
    args.num_runs = sorted({int(r) for r in args.num_runs.split(',')})
  except ValueError:
    parser.error(f'--num_runs {args.num_runs}: give whole numbers, e.g. 1,4,8')
  if args.num_runs[0] < 1:
    parser.error('--num_runs: every R must be at least 1')
  args.methods = tuple(dict.fromkeys(args.methods.split(',')))
  args.peer_convs = tuple(dict.fromkeys(args.peer_convs.split(',')))
  for name, given, known in (('methods', args.methods, throughput.METHODS),
                             ('peer_convs', args.peer_convs, tuple(conv.FORMS))):
    unknown = [g for g in given if g not in known]
    if unknown:
      parser.error(f'--{name}: unknown {", ".join(unknown)} (known: {", ".join(known)})')
  return args


def main(argv=None):
  start = time.perf_counter()
  args = parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  cli.quiet_library_logs()
  device = jax.devices()[0]
  common = {'device_kind': device.device_kind, 'platform': device.platform,
            'jax': jax.__version__, 'model': args.model, 'width': args.width,
            'dtype': args.dtype, 'batch_size': args.batch_size}
  matching = [r for r in read_rows(args.out) if all(r[k] == common[k] for k in KEY
                                                     if k in common)]
  done = {(r['num_runs'], r['method'], r['peer_conv']) for r in matching}  # The rest of KEY.
  todo = [c for c in cells(args.num_runs, args.methods, args.peer_convs) if c not in done]
  print(f'{device.platform} {device.device_kind}, jax {jax.__version__}: {args.model} at width '
        f'{args.width}, {args.dtype}, batch {args.batch_size} per run, {args.steps}-step '
        f'intervals; {len(todo)} cells to measure, {len(done)} already in {args.out}',
        flush=True)
  if os.path.dirname(args.out):
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
  measured, skipped, failed, stopped = [], [], [], ''
  open_source = input_pipeline.open_source
  input_pipeline.open_source = throughput.CachedSources()
  previous_handler = signal.signal(signal.SIGTERM, _stop)
  try:
    with tempfile.TemporaryDirectory() as tmp:
      data_dir = None
      for num_runs, method, peer_conv in todo:
        name = f'R={num_runs} {method} {peer_conv}'
        left = args.budget_s - (time.perf_counter() - start)
        cost = estimate_s(num_runs, peer_conv, matching, args.steps)
        if cost > left or left <= 0:
          skipped.append(name)
          print(f'  skipped {name}: about {cost:.0f} s, {max(left, 0):.0f} s of the budget '
                'left', flush=True)
          continue
        if data_dir is None:  # Throughput does not depend on pixel values.
          data_dir = throughput.random_folder(os.path.join(tmp, 'data'), per_class=max(
              8, -(-4 * args.batch_size // 10)))
        config = throughput.cell_config(args.model, method, 'device', args.dtype, args,
                                        data_dir, 'train')
        config.num_runs = num_runs
        config.kernels.peer_conv = peer_conv
        workdir = os.path.join(tmp, f'R{num_runs}_{method}_{peer_conv}')
        t0 = time.perf_counter()
        try:
          with warnings.catch_warnings():  # The mean of no interval, should SIGTERM come.
            warnings.simplefilter('ignore', RuntimeWarning)
            figures = throughput.measure(config, workdir)
        except Stopped:
          stopped = name
          break
        except Exception as e:  # One cell's failure (memory, compiler) leaves the others.
          failed.append(name)
          print(f'  {name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}',
                flush=True)
          continue
        if len(metrics.read(workdir, metrics.TRAIN)) < 3:
          # The loop takes a SIGTERM itself: it saves, stops and returns early.
          stopped = name
          break
        row = {**common, 'method': method, 'num_runs': num_runs, 'peer_conv': peer_conv,
               'step_ms': figures['step_ms'], 'images_per_sec': figures['images_per_sec'],
               'compile_s': figures['compile_s'], 'steps': args.steps,
               'wall_s': time.perf_counter() - t0}
        with open(args.out, 'a') as f:
          f.write(json.dumps(row) + '\n')
        measured.append(row)
        matching.append(row)
        print(f'  {name}: {row["images_per_sec"]:.0f} images/s, {row["step_ms"]:.2f} ms a '
              f'step, compile {row["compile_s"]:.1f} s, {row["wall_s"]:.0f} s in all', flush=True)
  except Stopped:  # Between cells.
    stopped = 'between cells'
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    input_pipeline.open_source = open_source
  budget = '' if math.isinf(args.budget_s) else f' of a budget of {args.budget_s:g} s'
  print(f'measured {len(measured)} cells in {time.perf_counter() - start:.0f} s{budget}'
        + (f'; {len(skipped)} skipped for the budget' if skipped else '')
        + (f'; {len(failed)} failed: {", ".join(failed)}' if failed else '')
        + ('' if measured or todo else '; every cell was already measured')
        + (f'; stopped by SIGTERM ({stopped})' if stopped else ''))
  print('\nimages/s of all runs (ratio to R = 1):')
  print(table(matching, args.num_runs, args.methods, args.peer_convs))
  return 128 + signal.SIGTERM if stopped else 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
