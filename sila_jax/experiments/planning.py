"""Grids into computations: a grid file's runs (arm x seed), and the groups of them that
train as one computation (sila_jax/training/runs.py).

A grid file's `get_grid()` returns {'config': the recipe every run shares, 'arms': {name:
{field: value}}, 'seeds': (...), optionally 'baselines': arm names to compare against,
'caption': what the grid asks, and 'export_seeds': seeds whose runs are exported}. A run is
(arm, seed): the recipe, the arm's overrides, then `--config` overrides (data location,
budget). Runs whose configs differ only in runs.FIELDS can share a computation.
"""
import dataclasses
import hashlib
import importlib.util
import json
import os
from typing import Any

import ml_collections

from sila_jax import config_checks
from sila_jax.configs import default
from sila_jax.errors import ConfigError
from sila_jax.training import runs

GRID_KEYS = {'config', 'arms', 'seeds', 'baselines', 'caption', 'export_seeds'}
# Where the data lies and how kernels compute (the same values, at another speed): a run
# finished with other values of these is the same run.
MACHINE_FIELDS = ('data_dir', 'kernels.peer_conv', 'kernels.dynamic_conv')
# What a run's identity takes them as: their defaults.
_MACHINE_DEFAULTS = {path: config_checks.get_field(default.get_config(), path)
                     for path in MACHINE_FIELDS}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell of the grid: its arm, seed and complete single-run config."""
  arm: str
  seed: int
  config: ml_collections.ConfigDict

  @property
  def digest(self) -> str:
    """Names the run's config but MACHINE_FIELDS: a finished run is reused only while this
    is unchanged."""
    identity = self.config.copy_and_resolve_references()
    identity.update_from_flattened_dict(_MACHINE_DEFAULTS)
    return digest(identity.to_dict())

  @property
  def result_path(self) -> str:
    """Where the run's result is kept, under the grid's output folder."""
    return os.path.join('runs', self.arm, f'seed_{self.seed}.json')


def digest(value: Any) -> str:
  """12 hex digits naming `value` (anything JSON can write, else its str)."""
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_grid(path: str) -> dict[str, Any]:
  """The dict `get_grid()` of the grid file at `path` returns, checked."""
  if not os.path.isfile(path):
    raise ConfigError(f'No grid file {path}.')
  return check_grid(call_file_function(path, 'get_grid'), path)


def call_file_function(path: str, name: str) -> Any:
  """What function `name` of the Python file at `path` returns (a grid or campaign file: user
  code, whose mistakes are reported as one ConfigError line)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return getattr(module, name)()
  except Exception as e:  # User code: report its mistake in one line.
    raise ConfigError(f'{path}: {type(e).__name__}: {e}') from e


def check_grid(grid: dict[str, Any], where: str) -> dict[str, Any]:
  """`grid` (as a grid file's get_grid() returns it), if well formed; `where` names it in
  the error."""
  unknown = set(grid) - GRID_KEYS
  if unknown or not {'config', 'arms', 'seeds'} <= set(grid):
    raise ConfigError(f'{where}: a grid holds config, arms and seeds (and optionally '
                      f'baselines, caption, export_seeds); got {sorted(grid)}.')
  missing = [b for b in grid.get('baselines', ()) if b not in grid['arms']]
  if missing:
    raise ConfigError(f'{where}: baselines {missing} are not arms ({", ".join(grid["arms"])}).')
  exported = grid.get('export_seeds', ())
  if (not isinstance(exported, (tuple, list))
      or any(isinstance(s, bool) or s not in grid['seeds'] for s in exported)):
    raise ConfigError(f'{where}: export_seeds must list seeds of the grid '
                      f'({", ".join(map(str, grid["seeds"]))}); got {exported!r}.')
  return grid


def plan(grid: dict[str, Any], overrides: dict[str, Any]) -> list[Cell]:
  """Every (arm, seed) run of `grid`, arm-major, `overrides` applied last."""
  known = config_checks.known_fields()
  seeds = tuple(grid['seeds'])
  if (not seeds or len(set(seeds)) < len(seeds)
      or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds)):
    raise ConfigError(f'Seeds must be distinct integers, at least one; got {seeds}.')
  owned = [p for fields in (*grid['arms'].values(), overrides) for p in fields
           if p in ('seed', 'num_runs') or p.startswith('runs.')]
  if owned:
    raise ConfigError(f'The runner sets {owned[0]} itself (seeds come from the grid); drop it.')
  planned = []
  for arm, fields in grid['arms'].items():
    for seed in grid['seeds']:
      config = grid['config'].copy_and_resolve_references()
      for path in {**fields, **overrides}:
        if path not in known:
          raise ConfigError(f'Arm {arm}: {config_checks.unknown_field_message(path, known)}')
      try:
        config.update_from_flattened_dict({**fields, **overrides, 'seed': seed})
      except (TypeError, ValueError) as e:
        raise ConfigError(f'Arm {arm}: {e}') from e
      if config.eval_every_steps == 0:
        raise ConfigError(f'Arm {arm} never validates (eval_every_steps=0); the grid reports '
                          'validation accuracy.')
      planned.append(Cell(arm, seed, config))
  return planned


def _structure(config: ml_collections.ConfigDict) -> str:
  """What runs sharing a computation must agree on: the config without runs.FIELDS."""
  neutral = config.copy_and_resolve_references()
  # Each field's zero of its own type: a boolean field takes no 0.
  neutral.update_from_flattened_dict({path: type(neutral[path])()
                                      for path in runs.FIELDS.values()})
  return digest(neutral.to_dict())


def group(pending: list[Cell], max_runs: int) -> list[list[Cell]]:
  """Runs that can share a computation, in plan order, at most `max_runs` per group."""
  by_structure: dict[str, list[Cell]] = {}
  for run in pending:
    by_structure.setdefault(_structure(run.config), []).append(run)
  return [members[i:i + max_runs] for members in by_structure.values()
          for i in range(0, len(members), max_runs)]


def group_config(members: list[Cell]) -> ml_collections.ConfigDict:
  """One config training `members` together: num_runs and each run's runs.FIELDS values."""
  config = members[0].config.copy_and_resolve_references()
  config.num_runs = len(members)
  config.update_from_flattened_dict({
      f'runs.{name}': tuple(run.config[path] for run in members)
      for name, path in runs.FIELDS.items()})
  return config


def group_workdir(out: str, members: list[Cell]) -> str:
  """Where `members` train together: <out>/work/<digest of their arms, seeds and configs>."""
  return os.path.join(out, 'work', digest([(r.arm, r.seed, r.digest) for r in members]))
