"""The evidence campaign: blocks of arms x seeds that every short GPU call advances.

  python -m sila_jax.experiments.campaign --out_dir DIR [--campaign configs/campaign.py]
      [--budget_s S] [--dry_run] [--data_dir D] [--device_kind KIND] [--throughput FILE ...]

A campaign file's `get_campaign()` lists blocks in priority order, each {'name', 'grid' (an
experiment grid, sila_jax/experiments/planning.py), 'title'}. A call reads what is finished
under DIR/<block>/runs and trains the next unfinished computations (planning.group of a
block's runs: runs differing only in runs.FIELDS train as one) in priority order, starting
none it expects not to finish inside what is left of --budget_s. Every run takes --data_dir
and the form of the run axis' convolutions measured fastest on the device kind (neither
changes what a run computes, so neither is part of a run's identity:
planning.MACHINE_FIELDS). Estimates: compile + R x steps x batch
/ aggregate images/s at R runs + validation, the images/s taken from this campaign's
throughput records for the device kind (DIR/throughput/*.jsonl, written by
benchmarks.batched_runs), else from --throughput files (default: the committed device
checks, results/device/*/throughput*.jsonl), else a stated guess; an arm no record measured
(DML peers, DY-ResNet, float32, ResNet-56, width 0.5) gets a cost factor from the records
(e.g. DML-2 / plain step time) or a stated guess, named in the --dry_run listing. Once a
computation has run, its estimate and wall time go to DIR/computations.jsonl, and estimates
on that device kind are scaled by the median ratio.

A computation's run count is chosen, from the same estimates, to fit one default call (so
that every call forms the same computations): a block that does not fit a call runs
computation by computation across calls. Each finished run is written at once; SIGTERM (or
the budget running out) stops the computation in training, whose finished runs are kept.
After each computation the block's summaries (running.write_summaries) and DIR/tables.md
(each block's summary.md, the newest first) are rewritten, and, when DIR is the repository's
results/campaign, the include blocks of every page (README.md, docs/*.md) including its files.
Every call but a dry run appends to DIR/log.md: date, machine, jax, commit, what it finished,
what is left, wall time. --dry_run trains nothing and lists what is left: runs,
computations, estimated GPU minutes per block and in total, and calls at --budget_s.
"""
import dataclasses
import datetime
import glob
import importlib.util
import json
import math
import os
import signal
import statistics
import subprocess
import threading
import time
from typing import Any

import ml_collections

from sila_jax import config_checks
from sila_jax import methods
from sila_jax.data import folder_data
from sila_jax.errors import ConfigError
from sila_jax.experiments import planning
from sila_jax.experiments import running
from sila_jax.models import model as model_lib
from sila_jax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CAMPAIGN = 'configs/campaign.py'
# One 8-minute command: start-up (wheels, data), the throughput stage on a new GPU kind, then
# this, compilation included.
DEFAULT_BUDGET_S = 420.0
# Computations are sized to this share of a default call: room for an estimate 15 % short.
SIZE_SHARE = 0.85
COMMITTED_THROUGHPUT = os.path.join('results', 'device', '*', 'throughput*.jsonl')
REFERENCE = {'model': 'resnet20', 'width': 1.0, 'dtype': 'bfloat16'}
# What the estimate assumes where no record tells; every one used is named in the listing.
GUESS = {
    'images_per_sec': {'cpu': 150.0, 'accelerator': 50_000.0},  # One ResNet-20, batch 128.
    'compile_s': 20.0,
    'setup_s': 10.0,  # Decoding the split, placing it, the first checkpoint.
    'eval_speedup': 3.0,  # A validation image costs a third of a training image.
    'eval_fixed_s': 0.5,  # Per validation: its best-checkpoint save, the fetch.
    'checkpoint_s': 0.5,
    'float32': 1.5, 'dml_per_peer': 1.0, 'dynamic': 3.0,
    # One model of a method against plain training's step time. ONE, CL-ILR and BYOT: their
    # ResNet-20 step on the 2-core CPU (benchmarks.throughput, float32, batch 128: x1.29,
    # x1.13, x1.02), rounded up.
    'methods': {'sila': 1.1, 'one': 1.3, 'clilr': 1.15, 'byot': 1.05},
    'narrow_accelerator': 0.75,  # width < 1: a GPU at batch 128 is far from FLOP-bound.
    'cifar10_per_class': 5000,  # The CIFAR-10 training folder, where data_dir is absent.
}
CALIBRATION_LIMITS = (0.5, 3.0)


@dataclasses.dataclass(frozen=True)
class Block:
  """One grid of the campaign: its name (DIR/<name>), title, grid and planned runs."""
  name: str
  title: str
  grid: dict[str, Any]
  planned: tuple[planning.Cell, ...]


# ---------------------------------------------------------------------------------------
# The campaign file.

def campaign_path(value: str) -> str:
  """`value` if it is a file, else the shipped config of that name (configs/campaign.py)."""
  if os.path.isfile(value):
    return value
  shipped = os.path.join(ROOT, 'sila_jax', 'configs', os.path.basename(value))
  if value.startswith('configs/') and os.path.isfile(shipped):
    return shipped
  raise ConfigError(f'No campaign file {value}.')


def load_campaign(path: str, overrides: dict[str, Any] | None = None) -> list[Block]:
  """The blocks of the campaign file at `path`, `overrides` ({field: value}) applied to every
  run, every run's config checked."""
  entries = planning.call_file_function(campaign_path(path), 'get_campaign')
  blocks = []
  for entry in entries:
    name = entry.get('name') if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name.isidentifier() or 'grid' not in entry:
      raise ConfigError(f"{path}: a block is {{'name': an identifier, 'grid', 'title'}}; "
                        f'got {entry!r:.100}.')
    if name in (b.name for b in blocks) or name == 'throughput':
      raise ConfigError(f'{path}: block name {name!r} is used twice or reserved.')
    grid = planning.check_grid(entry['grid'], f'{path}: block {name}')
    try:
      planned = planning.plan(grid, overrides or {})
      for run in planned:  # Every mistake before anything compiles.
        config_checks.check_config(run.config, 1)
    except ConfigError as e:
      raise ConfigError(f'{path}: block {name}: {e}') from e
    blocks.append(Block(name, entry.get('title', name), grid, tuple(planned)))
  if not blocks:
    raise ConfigError(f'{path}: get_campaign() lists no blocks.')
  return blocks


# ---------------------------------------------------------------------------------------
# Throughput records and the estimate.

def read_records(paths: list[str]) -> list[dict[str, Any]]:
  """Every throughput row (device_kind, images_per_sec, ...) of the JSON-lines files."""
  return [row for path in paths for row in read_jsonl(path)
          if 'device_kind' in row and 'images_per_sec' in row]


def campaign_record_files(out: str) -> list[str]:
  return sorted(glob.glob(os.path.join(out, 'throughput', '*.jsonl')))


def committed_record_files() -> list[str]:
  return sorted(glob.glob(os.path.join(ROOT, COMMITTED_THROUGHPUT)))


def method(config: ml_collections.ConfigDict) -> str:
  """The throughput records' name of what `config` trains: its method (methods.name: plain,
  sila, one, ...), and with K > 1 peers dml<K> (plain) or <method>_dml<K>."""
  base = methods.name(config)
  peers = config.dml.num_peers
  if peers == 1:
    return base
  return f'dml{peers}' if base == 'plain' else f'{base}_dml{peers}'


def _method_and_peers(name: str) -> tuple[str, int]:
  """`method`'s name taken apart: 'dml2' -> ('plain', 2), 'one_dml3' -> ('one', 3),
  'sila' -> ('sila', 1)."""
  base, dml, peers = name.rpartition('dml')
  if not dml:
    return name, 1
  return base.removesuffix('_') or 'plain', int(peers)


def kind(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a computation's speed depends on besides its run count and batch."""
  return {'model': config.model, 'width': float(config.width), 'method': method(config),
          'dtype': config.dtype}


def describe(cell: dict[str, Any]) -> str:
  width = '' if cell['width'] == 1 else f' width {cell["width"]:g}'
  return f"{cell['model']}{width} {cell['method']} {cell['dtype']}"


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The seconds a computation is expected to take, and what the figure rests on."""
  seconds: float
  images_per_sec: float  # Aggregate, all runs.
  notes: tuple[str, ...]


class Estimator:
  """Seconds of a computation of R runs on `device_kind`, from throughput `records`."""

  def __init__(self, device_kind: str, records: list[dict[str, Any]], sources: str,
               calibration: tuple[float, int] = (1.0, 0)):
    self.device_kind = device_kind
    self.rows = [r for r in records if r['device_kind'] == device_kind]
    self.sources = sources
    self.calibration = calibration  # (factor, computations it comes from)
    self.platform = 'cpu' if device_kind.lower() == 'cpu' else 'accelerator'
    self.peer_conv, self.peer_conv_note = self._fastest_form()

  def _fastest_form(self) -> tuple[str, str]:
    """The form of the run axis' convolutions (config.kernels.peer_conv) the computations
    take: the fastest measured at the largest batched R, else what 'auto' takes here; and
    why, for the listing."""
    auto = model_lib.AUTO_KERNELS['cpu' if self.platform == 'cpu' else 'gpu']['peer_conv']
    batched = [r for r in self.rows if r.get('num_runs', 1) > 1 and 'peer_conv' in r]
    if not batched:
      return auto, (f"{auto}, what 'auto' takes there (no batched runs measured on "
                    f'{self.device_kind})')
    largest = max(r['num_runs'] for r in batched)
    fastest = max((r for r in batched if r['num_runs'] == largest),
                  key=lambda r: r['images_per_sec'])
    return fastest['peer_conv'], (f"{fastest['peer_conv']} (the fastest measured at "
                                  f'{largest} runs on {self.device_kind})')

  def _matching(self, cell: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in self.rows if all(r.get(k, REFERENCE.get(k)) == v for k, v in cell.items())]

  def _ratio(self, slow: dict[str, Any], fast: dict[str, Any]) -> float | None:
    """Mean step-time ratio of `slow` to `fast` cells over records at the same batch, R."""
    ratios = []
    for a in self._matching(slow):
      for b in self._matching(fast):
        if (a['batch_size'], a.get('num_runs', 1)) == (b['batch_size'], b.get('num_runs', 1)):
          ratios.append(b['images_per_sec'] / a['images_per_sec'])
    return statistics.fmean(ratios) if ratios else None

  def _factor(self, cell: dict[str, Any], field: str, value: Any, guess: float,
              label: str) -> tuple[float, str]:
    """How much slower `cell` is than `cell` with `field` = `value`: measured, else `guess`."""
    measured = None
    for other in ({**cell, field: value}, {**REFERENCE, 'method': 'plain'}):
      measured = self._ratio({**other, field: cell[field]}, {**other, field: value})
      if measured:
        break
    if measured:
      return measured, f'{label} x{measured:.2f} (measured, {self.device_kind})'
    return guess, f'{label} x{guess:.2f} (a guess: no record on {self.device_kind})'

  def _substitutions(self, cell: dict[str, Any]) -> list[tuple[str, Any, float, str]]:
    """(field, reference value, guessed slow-down, label) for each field of `cell` that
    differs from REFERENCE, in the order `_reduce` moves them."""
    moves = []
    if cell['dtype'] != REFERENCE['dtype']:
      moves.append(('dtype', REFERENCE['dtype'], GUESS['float32'], cell['dtype']))
    if cell['model'] != REFERENCE['model']:
      depth = float(''.join(c for c in cell['model'] if c.isdigit()) or 20) / 20
      guess = depth * (GUESS['dynamic'] if cell['model'].startswith('dy_') else 1.0)
      moves.append(('model', REFERENCE['model'], guess, cell['model']))
    if cell['width'] != REFERENCE['width']:
      narrow = (GUESS['narrow_accelerator'] if self.platform == 'accelerator'
                else cell['width'] ** 2)
      moves.append(('width', REFERENCE['width'], narrow if cell['width'] < 1
                    else cell['width'] ** 2, f'width {cell["width"]:g}'))
    base, peers = _method_and_peers(cell['method'])
    if peers > 1:  # DML peers: from DML-2 against plain.
      moves.append(('method', base, peers * GUESS['dml_per_peer'], cell['method']))
    if base != 'plain':
      moves.append(('method', 'plain', GUESS['methods'][base], base))
    return moves

  def _reduce(self, cell: dict[str, Any]) -> tuple[dict[str, Any], float, list[str]]:
    """(a cell with records, how many times slower `cell` is, notes): the fields of
    `_substitutions` move to their reference values one at a time until records exist."""
    factor, notes = 1.0, []
    for field, value, guess, label in self._substitutions(cell):
      if self._matching(cell):
        break
      if field == 'method' and _method_and_peers(cell['method'])[1] > 1:
        peers = _method_and_peers(cell['method'])[1]
        two, note = self._factor({**cell, 'method': 'dml2'}, 'method', 'plain',
                                 2 * GUESS['dml_per_peer'], 'DML-2')
        step_factor = two * peers / 2
        if peers != 2:
          note += f', x{peers / 2:g} for {peers} peers'
      else:
        step_factor, note = self._factor(cell, field, value, guess, label)
      factor, cell = factor * step_factor, {**cell, field: value}
      notes.append(note)
    return cell, factor, notes

  def _points(self, cell: dict[str, Any], batch_size: int) -> dict[int, tuple[float, float]]:
    """{images per step (R x batch): (step seconds, compile seconds)} of `cell`'s records, the
    mean step time over repeats: batched rows at `batch_size` per run when there are any, in
    the form the computations take (`peer_conv`; one run has no run axis, so any form)."""
    rows = [r for r in self._matching(cell)
            if r.get('num_runs', 1) == 1 or r.get('peer_conv') == self.peer_conv]
    batched = [r for r in rows if 'num_runs' in r and r['batch_size'] == batch_size]
    points: dict[int, list[tuple[float, float]]] = {}
    for row in batched or rows:
      images = row.get('num_runs', 1) * row['batch_size']
      points.setdefault(images, []).append((images / row['images_per_sec'],
                                            row.get('compile_s', GUESS['compile_s'])))
    return {t: (statistics.fmean(s for s, _ in p), max(c for _, c in p))
            for t, p in points.items()}

  def step_seconds(self, config: ml_collections.ConfigDict,
                   num_runs: int) -> tuple[float, float, list[str]]:
    """(step seconds, compile seconds, notes) of `num_runs` runs of `config` together.

    Step time is interpolated linearly in the images per step between measured points;
    below the smallest it is the smallest's (a smaller step is assumed no faster), above the
    largest it grows in proportion (the aggregate images/s stays the largest's).
    """
    cell, factor, notes = self._reduce(kind(config))
    images = num_runs * config.batch_size
    points = self._points(cell, config.batch_size)
    if not points:
      guess = GUESS['images_per_sec'][self.platform]
      notes.append(f'{describe(cell)}: no record on {self.device_kind}; a guess of '
                   f'{guess:,.0f} images/s for every R')
      return factor * images / guess, GUESS['compile_s'], notes
    sizes = sorted(points)
    low = max([t for t in sizes if t <= images], default=sizes[0])
    high = min([t for t in sizes if t >= images], default=sizes[-1])
    if images <= sizes[0]:
      seconds = points[sizes[0]][0]
    elif images >= sizes[-1]:
      seconds = points[sizes[-1]][0] * images / sizes[-1]
    else:
      share = (images - low) / (high - low) if high > low else 0.0
      seconds = points[low][0] + share * (points[high][0] - points[low][0])
    compile_s = points[min(sizes, key=lambda t: abs(t - images))][1]
    return factor * seconds, compile_s, notes

  def estimate(self, config: ml_collections.ConfigDict, num_runs: int) -> Estimate:
    """Compilation (training and validation) and set-up, R x steps x batch images at the
    aggregate images/s, validation and checkpoints, scaled by the calibration."""
    step_s, compile_s, notes = self.step_seconds(config, num_runs)
    steps = train_steps(config)
    every = steps_per_epoch(config) if config.eval_every_steps == -1 else config.eval_every_steps
    evaluations = math.ceil(steps / every) if every else 0
    images_per_sec = num_runs * config.batch_size / step_s
    validation = evaluations * (num_runs * split_size(config, config.eval_split)
                                / (GUESS['eval_speedup'] * images_per_sec) + GUESS['eval_fixed_s'])
    seconds = (2 * compile_s + GUESS['setup_s'] + steps * step_s + validation
               + steps // config.checkpoint_every_steps * GUESS['checkpoint_s'])
    factor, count = self.calibration
    if count:
      notes.append(f'x{factor:.2f}: measured / estimated over {count} computation(s) of this '
                   f'campaign on {self.device_kind}')
    return Estimate(factor * seconds, images_per_sec, tuple(notes))


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split`: counted in the folder when it is there, else CIFAR-10's."""
  if config.dataset != 'folder':
    return 50_000 if split.startswith('train') else 10_000
  name, per_class = folder_data.parse_split(split)
  root = os.path.join(config.data_dir, name)
  if os.path.isdir(root):
    counts = [len(os.listdir(os.path.join(root, c))) for c in sorted(os.listdir(root))
              if os.path.isdir(os.path.join(root, c))]
  else:
    counts = [GUESS['cifar10_per_class']] * config.num_classes
  return sum(len(range(count)[per_class]) for count in counts)


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  return max(split_size(config, config.train_split) // config.batch_size, 1)


def train_steps(config: ml_collections.ConfigDict) -> int:
  """The run's steps, as train.plan_run fixes them (one device)."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch(config)


def calibration(out: str, device_kind: str) -> tuple[float, int]:
  """(median of measured / estimated seconds, how many) of this campaign's computations on
  `device_kind`, within CALIBRATION_LIMITS; (1.0, 0) before the first."""
  ratios = [row['seconds'] / row['estimated_s'] for row in read_jsonl(computations_file(out))
            if row['device_kind'] == device_kind and row['estimated_s'] > 0]
  if not ratios:
    return 1.0, 0
  low, high = CALIBRATION_LIMITS
  return min(max(statistics.median(ratios), low), high), len(ratios)


def target_device(local_kind: str, dry_run: bool, records: list[dict[str, Any]]) -> str:
  """The device kind to estimate for: this machine's, but for a dry run on a CPU the
  accelerator of the newest records (the campaign runs on GPUs; a CPU only plans it)."""
  if not dry_run or local_kind.lower() != 'cpu':
    return local_kind
  accelerators = [r['device_kind'] for r in records if r['device_kind'].lower() != 'cpu']
  return accelerators[-1] if accelerators else local_kind


def make_estimator(out: str, device_kind: str, throughput: list[str],
                   dry_run: bool) -> Estimator:
  """The estimator for this call: the campaign's records for the device kind if any, else
  those of `throughput` (default: the committed device checks)."""
  local = read_records(campaign_record_files(out))
  fallback_files = throughput or committed_record_files()
  fallback = read_records(fallback_files)
  kind_ = device_kind or target_device(local_device()[0], dry_run, local + fallback)
  if any(r['device_kind'] == kind_ for r in local):
    records, sources = local, f'the campaign\'s throughput records ({os.path.join(out, "throughput")})'
  else:
    records = fallback
    sources = ', '.join(os.path.relpath(p, ROOT) if p.startswith(ROOT) else p
                        for p in fallback_files) or 'no records'
  return Estimator(kind_, records, sources, calibration(out, kind_))


# ---------------------------------------------------------------------------------------
# Computations and the schedule.

@dataclasses.dataclass(frozen=True)
class Computation:
  """Runs of one block that train together; `members` are those not finished yet."""
  block: Block
  members: tuple[planning.Cell, ...]
  estimate: Estimate


def runs_per_computation(estimator: Estimator, config: ml_collections.ConfigDict,
                         count: int) -> int:
  """R for `count` runs sharing a computation: the least total estimated time over balanced
  splits whose computations each fit SIZE_SHARE of a default call (1 if none fits)."""
  best = None
  for parts in range(1, count + 1):
    size = math.ceil(count / parts)
    seconds = estimator.estimate(config, size).seconds
    if seconds <= SIZE_SHARE * DEFAULT_BUDGET_S:
      total = math.ceil(count / size) * seconds
      if best is None or total < best[0] - 1e-9:
        best = (total, size)
  return best[1] if best else 1


def block_computations(block: Block, out: str, estimator: Estimator) -> list[Computation]:
  """The block's unfinished computations in priority order. They are formed from all its
  planned runs, so a call forms the same ones whatever earlier calls finished."""
  pending = []
  for same in planning.group(list(block.planned), len(block.planned)):
    size = runs_per_computation(estimator, same[0].config, len(same))
    for members in planning.group(same, size):
      left = tuple(r for r in members if running.finished(r, block_out(out, block)) is None)
      if left:
        pending.append(Computation(block, left, estimator.estimate(left[0].config, len(left))))
  return pending


def calls(pending: list[Computation], budget_s: float) -> tuple[int, list[Computation]]:
  """How many calls of `budget_s` the computations take when each call starts, in order,
  every one that fits what is left of it (as `run_campaign` does); and those that fit none."""
  never = [c for c in pending if c.estimate.seconds > budget_s]
  left = [c for c in pending if c not in never]
  count = 0
  while left:
    count += 1
    remaining, later = budget_s, []
    for c in left:
      if c.estimate.seconds <= remaining:
        remaining -= c.estimate.seconds
      else:
        later.append(c)
    left = later
  return count, never


def block_out(out: str, block: Block) -> str:
  return os.path.join(out, block.name)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def computations_file(out: str) -> str:
  return os.path.join(out, 'computations.jsonl')


# ---------------------------------------------------------------------------------------
# What a call writes: summaries, tables, README, the log.

def write_block(block: Block, out: str) -> None:
  """The block's runs.csv, summary.csv, summary.md and plots (running.write_summaries)."""
  running.write_summaries(block.grid, list(block.planned), block_out(out, block),
                          'bash experiments/campaign.sh', block.title)


def write_tables(blocks: list[Block], out: str) -> str:
  """DIR/tables.md: each block's summary.md under its title and the machines that trained it,
  the most recently trained block first (by DIR/computations.jsonl)."""
  history = read_jsonl(computations_file(out))
  last = {row['block']: i for i, row in enumerate(history)}
  written = [b for b in blocks if os.path.exists(os.path.join(block_out(out, b), 'summary.md'))]
  written.sort(key=lambda b: -last.get(b.name, -1))
  parts = ['# Campaign results\n\nWritten by `python -m sila_jax.experiments.campaign` '
           '(`bash experiments/campaign.sh`), the most recently trained block first; '
           'each block\'s folder holds runs.csv, accuracy.png and curves.png.\n']
  for block in written:
    machines = sorted({row['device_kind'] for row in history if row['block'] == block.name})
    with open(os.path.join(block_out(out, block), 'summary.md')) as f:
      summary = f.read()
    parts.append(f'## {block.title} (`{block.name}`)\n\n'
                 f"Trained on: {', '.join(machines) or 'unknown'}.\n\n{summary}")
  path = os.path.join(out, 'tables.md')
  metrics.write_atomically(path, '\n'.join(parts))
  return path


def refresh_readme(out: str) -> None:
  """Rewrites the include blocks (experiments/readme_tables.py) of every page, README.md and
  docs/*.md, that includes a file of results/campaign, if `out` is the repository's
  results/campaign."""
  campaign_dir = os.path.join(ROOT, 'results', 'campaign')
  script = os.path.join(ROOT, 'experiments', 'readme_tables.py')
  if (not os.path.isdir(campaign_dir) or not os.path.samefile(out, campaign_dir)
      or not os.path.exists(script)):
    return
  spec = importlib.util.spec_from_file_location('readme_tables', script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in module.pages():
    path = os.path.join(ROOT, name)
    with open(path) as f:
      text = f.read()
    if '<!-- include results/campaign/' not in text:
      continue
    try:
      fresh, changed = module.included(text)
    except FileNotFoundError as e:
      print(f'{name} not refreshed: it includes a file that does not exist '
            f'({os.path.relpath(e.filename, ROOT)}).')
      continue
    if changed:
      with open(path, 'w') as f:
        f.write(fresh)
      print(f'Refreshed {name}: {", ".join(changed)}.')


def local_device() -> tuple[str, int, str]:
  """(device kind, device count, jax version) of this machine."""
  import jax  # pylint: disable=g-import-not-at-top  # Only what runs needs the backend.
  devices = jax.devices()
  return devices[0].device_kind, len(devices), jax.__version__


def commit() -> str:
  """The checkout's commit: git's, else .device_data/COMMIT (carried to the GPU), else
  'unknown'."""
  try:
    done = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True, timeout=10)
    if done.returncode == 0 and done.stdout.strip():
      return done.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  path = os.path.join(ROOT, '.device_data', 'COMMIT')
  if os.path.exists(path):
    with open(path) as f:
      return f.read().strip() or 'unknown'
  return 'unknown'


def runs_left(blocks: list[Block], out: str) -> dict[str, tuple[int, int]]:
  """{block: (runs not finished, runs planned)}."""
  return {b.name: (sum(running.finished(r, block_out(out, b)) is None for r in b.planned),
                   len(b.planned)) for b in blocks}


def append_log(out: str, blocks: list[Block], done: list[dict[str, Any]], stopped: str,
               started: float, budget_s: float) -> None:
  """One entry in DIR/log.md for this call."""
  kind_, count, jax_version = local_device()
  left = runs_left(blocks, out)
  lines = [f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
           f'{kind_} x{count}, jax {jax_version}, commit {commit()[:12]}', '']
  for row in done:
    lines.append(f"- {row['block']}: {row['runs']} run(s) finished in {row['seconds']:.0f} s "
                 f"(estimated {row['estimated_s']:.0f} s)")
  if not done:
    lines.append('- no computation finished')
  complete = [name for name in dict.fromkeys(r['block'] for r in done) if left[name][0] == 0]
  if complete:
    lines.append(f"- blocks complete: {', '.join(complete)}")
  if stopped:
    lines.append(f'- {stopped}')
  remaining = sum(n for n, _ in left.values())
  lines.append(f'- runs left: {remaining} of {sum(t for _, t in left.values())}'
               + (': ' + ', '.join(f'{k} {n}' for k, (n, _) in left.items() if n) if remaining
                  else ''))
  lines.append(f'- wall time: {time.time() - started:.0f} s (budget {budget_s:.0f} s)')
  path = os.path.join(out, 'log.md')
  new = not os.path.exists(path)
  with open(path, 'a') as f:
    if new:
      f.write('# Campaign log\n\nOne entry per call of '
              '`python -m sila_jax.experiments.campaign`.\n\n')
    f.write('\n'.join(lines) + '\n\n')


# ---------------------------------------------------------------------------------------
# The call.

def listing(blocks: list[Block], out: str, estimator: Estimator, budget_s: float) -> str:
  """What --dry_run prints: per block the runs left, its computations with their estimated
  minutes and the factors behind them; the total, and how many calls of `budget_s`."""
  lines = [f'Estimates for {estimator.device_kind} from {estimator.sources}.',
           f"The run axis' convolutions (kernels.peer_conv): {estimator.peer_conv_note}."]
  pending = []
  for block in blocks:
    mine = block_computations(block, out, estimator)
    pending += mine
    left = sum(len(c.members) for c in mine)
    minutes = sum(c.estimate.seconds for c in mine) / 60
    lines.append(f'{block.name}: {left} of {len(block.planned)} runs left, {len(mine)} '
                 f'computation(s), {minutes:.1f} GPU min')
    notes, rows = [], []
    for c in mine:
      rows.append(f'{len(c.members):3d} runs  {describe(kind(c.members[0].config)):32s} '
                  f'{c.estimate.seconds / 60:5.1f} min  {c.estimate.images_per_sec:9,.0f} images/s')
      notes += [n for n in c.estimate.notes if n not in notes]
    for row in dict.fromkeys(rows):  # Equal computations on one line.
      lines.append(f'  {rows.count(row):2d} x {row}')
    lines += [f'      {note}' for note in notes]
  count, never = calls(pending, budget_s)
  lines.append(f'Total: {sum(len(c.members) for c in pending)} runs left, {len(pending)} '
               f'computation(s), {sum(c.estimate.seconds for c in pending) / 60:.1f} GPU min: '
               f'{count} call(s) at --budget_s {budget_s:g}.')
  for name in dict.fromkeys(c.block.name for c in never):
    mine = [c for c in never if c.block.name == name]
    lines.append(f'Fits no call at --budget_s {budget_s:g}: {len(mine)} computation(s) of '
                 f'{name} (up to {max(c.estimate.seconds for c in mine):.0f} s each); they '
                 'wait for a longer --budget_s or faster measured throughput.')
  return '\n'.join(lines)


class StopRequests:
  """While open: records SIGTERM between computations (train.train_and_evaluate handles it
  during training), and sends this process SIGTERM once `seconds` have passed."""

  def __init__(self, seconds: float):
    self.seconds = max(seconds, 0.0)
    self.received = False

  def _record(self, signum, frame):
    del signum, frame
    self.received = True

  def __enter__(self) -> 'StopRequests':
    self.previous = signal.signal(signal.SIGTERM, self._record)
    self.timer = threading.Timer(self.seconds, os.kill, (os.getpid(), signal.SIGTERM))
    self.timer.daemon = True
    self.timer.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self.timer.cancel()
    signal.signal(signal.SIGTERM, self.previous)


def train(computation: Computation, out: str, estimator: Estimator) -> dict[str, Any] | None:
  """Trains one computation and appends its time to DIR/computations.jsonl; returns that
  row, or None if it was stopped."""
  block = computation.block
  start = time.perf_counter()
  export_seeds = tuple(block.grid.get('export_seeds', ()))
  if running.train_group(list(computation.members), block_out(out, block),
                         export_seeds=export_seeds):
    return None  # Stopped.
  row = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
         'device_kind': estimator.device_kind, 'block': block.name,
         'runs': len(computation.members),
         # Uncalibrated, so that the calibration does not feed on itself.
         'estimated_s': computation.estimate.seconds / estimator.calibration[0],
         'seconds': time.perf_counter() - start}
  with open(computations_file(out), 'a') as f:
    f.write(json.dumps(row) + '\n')
  return row


def train_in_order(blocks: list[Block], out: str, estimator: Estimator, budget_s: float,
                   started: float, stops: StopRequests) -> tuple[list[dict[str, Any]], str]:
  """Trains, in priority order, every computation that fits what is left of the budget, until
  a stop; after each, that block's summaries, the tables and README.md. Returns the rows of
  the computations finished and what stopped the call ('' if nothing did)."""
  done = []
  for block in blocks:
    for computation in block_computations(block, out, estimator):
      if stops.received:
        return done, 'stopped by SIGTERM between computations'
      remaining = budget_s - (time.time() - started)
      if computation.estimate.seconds > remaining:
        print(f'{block.name}: not starting {len(computation.members)} runs '
              f'(~{computation.estimate.seconds:.0f} s, {remaining:.0f} s left).')
        continue
      print(f'{block.name}: training {len(computation.members)} runs together '
            f'(~{computation.estimate.seconds:.0f} s, {remaining:.0f} s left).')
      row = train(computation, out, estimator)
      write_block(block, out)
      if row is None:
        return done, (f'stopped by SIGTERM in {block.name} ({len(computation.members)} runs '
                      'in training); its finished runs are kept')
      done.append(row)
      write_tables(blocks, out)
      refresh_readme(out)
  return done, ''


def run_campaign(campaign: str, out: str, budget_s: float = DEFAULT_BUDGET_S, *,
                 dry_run: bool = False, data_dir: str = '', device_kind: str = '',
                 throughput: tuple[str, ...] = ()) -> list[dict[str, Any]]:
  """Trains the next computations of the campaign that fit `budget_s` seconds (see the
  module's docstring); returns one row per computation finished. Writes nothing with
  `dry_run`, but prints the listing."""
  started = time.time()
  if not budget_s > 0:
    raise ConfigError(f'--budget_s must be positive, got {budget_s:g}.')
  for path in throughput:
    if not os.path.isfile(path):
      raise ConfigError(f'No throughput file {path}.')
  if data_dir and not os.path.isdir(data_dir):
    raise ConfigError(f'--data_dir {data_dir} is not a directory.')
  estimator = make_estimator(out, device_kind, list(throughput), dry_run)
  # Neither changes what a run computes (planning.MACHINE_FIELDS).
  overrides = {'kernels.peer_conv': estimator.peer_conv}
  if data_dir:
    overrides['data_dir'] = data_dir
  blocks = load_campaign(campaign, overrides)
  if dry_run:
    print(listing(blocks, out, estimator, budget_s))
    return []
  os.makedirs(out, exist_ok=True)
  with StopRequests(budget_s - (time.time() - started)) as stops:
    done, stopped = train_in_order(blocks, out, estimator, budget_s, started, stops)
  write_tables(blocks, out)
  append_log(out, blocks, done, stopped, started, budget_s)
  left = runs_left(blocks, out)
  print(f"Finished {sum(r['runs'] for r in done)} run(s) in {len(done)} computation(s); "
        f"{sum(n for n, _ in left.values())} run(s) left. {stopped}".strip())
  return done


def main() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from sila_jax.commands import cli  # pylint: disable=g-import-not-at-top

  out_dir = flags.DEFINE_string('out_dir', None, 'The campaign folder (results/campaign).')
  campaign = flags.DEFINE_string('campaign', DEFAULT_CAMPAIGN, 'The campaign file.')
  budget_s = flags.DEFINE_float('budget_s', DEFAULT_BUDGET_S, 'Seconds this call may train, '
                                'compilation included.')
  dry_run = flags.DEFINE_bool('dry_run', False, 'List what is left with its estimated GPU '
                              'minutes; train nothing.')
  data_dir = flags.DEFINE_string('data_dir', '', "Where this call's CIFAR-10 folder is "
                                 "(every run's data_dir).")
  device_kind = flags.DEFINE_string('device_kind', '', 'Estimate for this device kind '
                                    "(default: this machine's; a dry run on a CPU: the "
                                    'accelerator of the newest records).')
  throughput = flags.DEFINE_multi_string('throughput', [], 'Throughput records to fall back '
                                         'on (default: results/device/*/throughput*.jsonl).')
  flags.mark_flags_as_required(['out_dir'])

  def run(argv):
    del argv
    run_campaign(campaign.value, out_dir.value, budget_s.value, dry_run=dry_run.value,
                 data_dir=data_dir.value, device_kind=device_kind.value,
                 throughput=tuple(throughput.value))
  cli.run_command(run)


if __name__ == '__main__':
  main()
