"""Where a run's figures go: one writer for metrics.jsonl, TensorBoard events and the log line.

A record is {'type': 'train' | 'validation', 'step': int, <metric>: float, ...}. Metric names
are the loop's ('loss', 'accuracy', 'peer_1/accuracy', 'run_2/loss', ...); TensorBoard tags
are '<type>/<metric>'. Only process 0 writes; the others' writers do nothing.
"""
import contextlib
import json
import os
from typing import Any, Callable

import jax
import tensorboardX

from sila_jax import runs

FILE = 'metrics.jsonl'
TRAIN, VALIDATION = 'train', 'validation'
TYPES = (TRAIN, VALIDATION)


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` whole or not at all (Ctrl-C, a full disk): a temporary file
  renamed over it."""
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def _typed(record: dict[str, Any]) -> dict[str, Any]:
  """A record as this module writes it. Records written before records had a 'type' are a
  validation if they hold 'val_' figures (which lose the prefix), else training."""
  if 'type' in record:
    return record
  if any(name.startswith('val_') for name in record):
    return {'type': VALIDATION, 'step': record['step'],
            **{k.removeprefix('val_'): v for k, v in record.items() if k.startswith('val_')}}
  return {'type': TRAIN, **record}


def read_file(path: str, kind: str | None = None) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl file in order, only those of type `kind` if given. Files
  of older versions read as today's; a last line cut off by a crash is left out."""
  with open(path) as f:
    lines = f.read().split('\n')
  records = [_typed(json.loads(line)) for line in lines[:-1] if line.strip()]
  if lines[-1].strip():  # No newline yet: whole only if it parses.
    with contextlib.suppress(json.JSONDecodeError):
      records.append(_typed(json.loads(lines[-1])))
  return [r for r in records if kind in (None, r['type'])]


def read(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
  """`read_file` of <workdir>/metrics.jsonl; [] if there is none."""
  path = os.path.join(workdir, FILE)
  return read_file(path, kind) if os.path.exists(path) else []


def last(workdir: str, kind: str) -> dict[str, Any]:
  """The metrics of the last record of type `kind` (no 'type', no 'step'); {} if none."""
  records = read(workdir, kind)
  return {k: v for k, v in records[-1].items() if k not in ('type', 'step')} if records else {}


def log_line(kind: str, metrics: dict[str, Any]) -> str:
  """'validation  accuracy 0.9312  loss 0.2543 ...': the summary a person reads; each run's
  own figures ('run_<r>/...') stay in metrics.jsonl."""
  return '  '.join([kind] + [f'{name} {value:.4g}' for name, value in metrics.items()
                             if not name.startswith(runs.RUN_PREFIX)])


class Writer:
  """Appends records to <workdir>/metrics.jsonl and <workdir>'s TensorBoard events, and hands
  each record's log line to `log`.

  start_step: the step the run resumes from. Records of later steps (written before a crash,
  to be redone) are dropped from metrics.jsonl, and TensorBoard is told to purge them.
  """

  def __init__(self, workdir: str, log: Callable[[str], None], start_step: int = 0):
    self._workdir, self._log = workdir, log
    self._enabled = jax.process_index() == 0
    if self._enabled:
      records = read(workdir)
      if any(r['step'] > start_step for r in records):
        write_atomically(os.path.join(workdir, FILE), ''.join(
            json.dumps(r) + '\n' for r in records if r['step'] <= start_step))
      # One event file per start: the name holds the start time, to the second, and the step.
      self._events = tensorboardX.SummaryWriter(workdir, purge_step=start_step + 1,
                                                flush_secs=30, filename_suffix=f'.{start_step}')

  def write(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
    """Records `metrics` (name -> number) of type `kind` at `step`."""
    if kind not in TYPES:
      raise ValueError(f'Unknown record type {kind!r}; one of {TYPES}.')
    if not self._enabled:
      return
    with open(os.path.join(self._workdir, FILE), 'a') as f:
      f.write(json.dumps({'type': kind, 'step': step, **metrics}) + '\n')
    for name, value in metrics.items():
      self._events.add_scalar(f'{kind}/{name}', value, step)
    self._log(log_line(kind, metrics))

  def close(self) -> None:
    """Flushes the TensorBoard events."""
    if self._enabled:
      self._events.close()
