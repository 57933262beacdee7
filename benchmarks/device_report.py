"""A device check's results as markdown tables: python -m benchmarks.device_report DIR.

Reads what benchmarks/device_check.sh (and later runs beside it) wrote into DIR:
throughput*.jsonl, training.jsonl, *_metrics.jsonl (a train.py run's metrics.jsonl, in either
format: records with a 'type', or the older untyped ones whose validation figures carry a
'val_' prefix), kernels.jsonl and env.txt; writes DIR/summary.md and prints it.
docs/results.md quotes these tables.
"""
import glob
import json
import os
import sys

import numpy as np

from sila_jax.training import metrics


def _lines(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def throughput_table(directory: str) -> list[str]:
  rows = ['| file | model | method | input | dtype | images/s | step ms | input wait | compile s |',
          '|---|---|---|---|---|---|---|---|---|']
  steps = {}
  for path in sorted(glob.glob(os.path.join(directory, 'throughput*.jsonl'))):
    for r in _lines(path):
      rows.append(f"| {os.path.basename(path)} | {r['model']} | {r['method']} | {r['input']} | "
                  f"{r['dtype']} | {r['images_per_sec']:,.0f} | {r['step_ms']:.2f} | "
                  f"{r['input_wait_fraction']:.1%} | {r['compile_s']:.1f} |")
      key = (os.path.basename(path), r['model'], r['method'], r['input'], r['dtype'])
      steps[key] = r['step_ms']
  rows += ['', '| file | model | input | dtype | SiLa / plain | DML-2 / plain |',
           '|---|---|---|---|---|---|']
  for (name, model, method, input_kind, dtype), ms in steps.items():
    if method != 'plain':
      continue
    ratio = lambda m: steps.get((name, model, m, input_kind, dtype))
    cells = [f'x{ratio(m) / ms:.3f}' if ratio(m) else '-' for m in ('sila', 'dml2')]
    rows.append(f'| {name} | {model} | {input_kind} | {dtype} | {cells[0]} | {cells[1]} |')
  return rows


def training_table(directory: str) -> list[str]:
  rows = ['| run | overrides of configs/cifar10_fast.py | steps | final val acc | best val acc | '
          'images/s | wall s (train.py, compile included) |', '|---|---|---|---|---|---|---|']
  path = os.path.join(directory, 'training.jsonl')
  for r in _lines(path) if os.path.exists(path) else []:
    rows.append(f"| {r['run']} | {' '.join(r['overrides']) or '(none)'} | {r['steps']} | "
                f"{r['val_accuracy']:.2%} | {r['best_val_accuracy']:.2%} | "
                f"{r['images_per_sec']:,.0f} | {r['wall_s']} |")
  for path in sorted(glob.glob(os.path.join(directory, '*_metrics.jsonl'))):
    train = metrics.read_file(path, metrics.TRAIN)
    val = metrics.read_file(path, metrics.VALIDATION)
    rows.append(f"| {os.path.basename(path)} | see the file's run | {val[-1]['step']} | "
                f"{val[-1]['accuracy']:.2%} | {max(r['accuracy'] for r in val):.2%} | "
                f"{np.median([r['images_per_sec'] for r in train]):,.0f} (median) | - |")
  return rows


def kernels_table(directory: str) -> list[str]:
  rows = ['| kernel | form | what | batch | ms (forward + backward) | compile s |',
          '|---|---|---|---|---|---|']
  path = os.path.join(directory, 'kernels.jsonl')
  for r in _lines(path) if os.path.exists(path) else []:
    rows.append(f"| {r['kernel']} | {r['form']} | {r['shape']} | {r['batch_size']} | "
                f"{r['ms']:.1f} | {r['compile_s']:.1f} |")
  return rows


def main(directory: str) -> None:
  with open(os.path.join(directory, 'env.txt')) as f:
    env = f.read().strip().splitlines()
  lines = [f'# Device check: {directory}', '', *[f'    {line}' for line in env], '',
           '## Throughput of the training loop', '', *throughput_table(directory), '',
           '## Training (validation: last 500 images of every class)', '',
           *training_table(directory), '', '## Kernel forms', '', *kernels_table(directory), '']
  text = '\n'.join(lines)
  with open(os.path.join(directory, 'summary.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main(sys.argv[1])
