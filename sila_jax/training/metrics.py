"""Where a run's figures go: one writer for metrics.jsonl, TensorBoard events and the log line.

A record is {'type': 'train' | 'validation', 'step': int, <metric>: float, ...}. Metric names
are built by `name` and read back by `parse` alone: 'loss', 'peer_1/accuracy', 'ensemble/loss',
'run_2/loss', 'run_2/peer_0/loss', 'branch_1/accuracy', 'peer_1/branch_ensemble/loss', ...;
TensorBoard tags are '<type>/<name>'. Only process 0
writes; the others' writers do nothing.

A step's metrics keep their axes until `flatten` names them: per-peer values sit under PEERS
with the peer axis last, the ensemble's under ENSEMBLE, each branch's of a method that
evaluates its branches under BRANCHES (peer and branch axes last) and their ensemble's under
BRANCH_ENSEMBLE (peer axis last), the runs' axis first (runs.summarize names it).
"""
import contextlib
import dataclasses
import json
import os
import re
from typing import Any, Callable

import jax
import tensorboardX

FILE = 'metrics.jsonl'
TRAIN, VALIDATION = 'train', 'validation'
TYPES = (TRAIN, VALIDATION)
RUN_PREFIX, PEER_PREFIX, ENSEMBLE = 'run_', 'peer_', 'ensemble'
BRANCH_PREFIX, BRANCH_ENSEMBLE = 'branch_', 'branch_ensemble'
PEERS = 'peers'  # The key of a step's per-peer metrics, {metric: (..., K)}.
BRANCHES = 'branches'  # The key of each branch's metrics, {metric: (..., K, m)}.
_NAME = re.compile(rf'(?:{RUN_PREFIX}(?P<run>\d+)/)?'
                   rf'(?:(?P<ensemble>{ENSEMBLE})/|{PEER_PREFIX}(?P<peer>\d+)/)?'
                   rf'(?:(?P<branch_ensemble>{BRANCH_ENSEMBLE})/|{BRANCH_PREFIX}(?P<branch>\d+)/)?'
                   rf'(?P<metric>.+)')


@dataclasses.dataclass(frozen=True)
class Name:
  """A metric's name taken apart: 'run_2/peer_1/accuracy' -> Name('accuracy', run=2, peer=1).

  run: the run's own value (None: the mean over runs, or the only run); peer: that peer's
  (None: the run's own metric); ensemble: the peers' ensemble's; branch: that branch's of the
  peer (ONE's and CL-ILR's; branch 0 is the deployed one); branch_ensemble: the peer's
  branches' ensemble's.
  """
  metric: str
  run: int | None = None
  peer: int | None = None
  ensemble: bool = False
  branch: int | None = None
  branch_ensemble: bool = False

  def __post_init__(self):
    if self.ensemble and self.peer is not None:
      raise ValueError(f'{self.metric}: the ensemble is no one peer (peer={self.peer}).')
    if self.branch_ensemble and self.branch is not None:
      raise ValueError(f'{self.metric}: the branch ensemble is no one branch '
                       f'(branch={self.branch}).')
    if self.ensemble and self.of_branch:
      raise ValueError(f'{self.metric}: the peers\' ensemble has no branches.')

  @property
  def of_branch(self) -> bool:
    """Whether it is one branch's or the branch ensemble's value."""
    return self.branch is not None or self.branch_ensemble

  @property
  def prefix(self) -> str:
    """Whose value it is: 'run_2/peer_1' of 'run_2/peer_1/accuracy'; '' for the run's own."""
    parts = [] if self.run is None else [f'{RUN_PREFIX}{self.run}']
    if self.ensemble:
      parts.append(ENSEMBLE)
    elif self.peer is not None:
      parts.append(f'{PEER_PREFIX}{self.peer}')
    if self.branch_ensemble:
      parts.append(BRANCH_ENSEMBLE)
    elif self.branch is not None:
      parts.append(f'{BRANCH_PREFIX}{self.branch}')
    return '/'.join(parts)

  def __str__(self) -> str:
    return f'{self.prefix}/{self.metric}' if self.prefix else self.metric


def name(metric: str, *, run: int | None = None, peer: int | None = None,
         ensemble: bool = False, branch: int | None = None,
         branch_ensemble: bool = False) -> str:
  """The written name of `metric` of run `run`, peer `peer` or the ensemble, and branch
  `branch` or the branch ensemble: name('loss', run=2, peer=1) == 'run_2/peer_1/loss'."""
  return str(Name(metric, run, peer, ensemble, branch, branch_ensemble))


def parse(written: str) -> Name:
  """`name`'s inverse: parse('run_2/ensemble/loss') == Name('loss', 2, None, True)."""
  match = _NAME.fullmatch(written)
  if match is None:  # Empty, or a line break in it.
    raise ValueError(f'Not a metric name: {written!r}.')
  number = lambda group: None if match[group] is None else int(match[group])  # noqa: E731
  return Name(match['metric'], number('run'), number('peer'), match['ensemble'] is not None,
              number('branch'), match['branch_ensemble'] is not None)


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
  """A step's metrics with their peer axis -> flat names: tree[PEERS][m] (..., K) becomes
  'peer_<i>/m' (...) for each peer when K > 1 (one peer's are the run's own), tree[ENSEMBLE][m]
  'ensemble/m', tree[BRANCHES][m] (..., K, n) 'peer_<i>/branch_<j>/m' ('branch_<j>/m' for one
  peer) and tree[BRANCH_ENSEMBLE][m] (..., K) 'peer_<i>/branch_ensemble/m'; every other entry
  stays as it is."""
  flat = {k: v for k, v in tree.items() if k not in (PEERS, ENSEMBLE, BRANCHES, BRANCH_ENSEMBLE)}

  def of_peers(value, **whose):  # value (..., K) -> each peer's, under its name.
    num_peers = value.shape[-1]
    return {name(metric, peer=None if num_peers == 1 else i, **whose): value[..., i]
            for i in range(num_peers)}
  for metric, value in tree.get(PEERS, {}).items():
    if value.shape[-1] > 1:
      flat.update(of_peers(value))
  flat.update({name(metric, ensemble=True): v for metric, v in tree.get(ENSEMBLE, {}).items()})
  for metric, value in tree.get(BRANCHES, {}).items():
    for j in range(value.shape[-1]):
      flat.update(of_peers(value[..., j], branch=j))
  for metric, value in tree.get(BRANCH_ENSEMBLE, {}).items():
    flat.update(of_peers(value, branch_ensemble=True))
  return flat


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
  own figures ('run_<r>/...') and each branch's stay in metrics.jsonl."""
  return '  '.join([kind] + [f'{written} {value:.4g}' for written, value in metrics.items()
                             if (parsed := parse(written)).run is None and not parsed.of_branch])


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
