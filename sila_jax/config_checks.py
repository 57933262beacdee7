"""Config validation: every field known, every value usable, before anything is compiled."""
import difflib
import math
from typing import Any, Iterator

import ml_collections

from sila_jax import methods
from sila_jax.configs import default
from sila_jax.data import input_pipeline
from sila_jax.errors import ConfigError
from sila_jax.models import backbones
from sila_jax.models import conv
from sila_jax.models import dynamic_conv
from sila_jax.models import model as model_lib
from sila_jax.training import distributed
from sila_jax.training import optimizer
from sila_jax.training import parallel
from sila_jax.training import runs


def field_paths(config: ml_collections.ConfigDict, prefix: str = '') -> Iterator[str]:
  """Dotted names of every leaf field: 'model', 'sila.weight', ..."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from field_paths(value, f'{prefix}{key}.')
    else:
      yield prefix + key


def get_field(config: ml_collections.ConfigDict | dict[str, Any], path: str) -> Any:
  """config['sila']['weight'] for path 'sila.weight'."""
  for key in path.split('.'):
    config = config[key]
  return config


def known_fields() -> list[str]:
  """Every field a run reads: those of configs/default.py."""
  return list(field_paths(default.get_config()))


def unknown_field_message(path: str, known: list[str]) -> str:
  """The error for an unknown field, suggesting the closest known one (or one of that name);
  a per-run list (runs.*) only for a path under runs."""
  known = [k for k in known if not k.startswith('runs.') or path.startswith('runs.')]
  close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
  by_leaf = [k for k in known if k.rsplit('.', 1)[-1] == path.rsplit('.', 1)[-1]]
  hint = close or by_leaf
  return f"Unknown config field '{path}'" + (f"; did you mean '{hint[0]}'?" if hint else '.')


def _numbers(values: tuple[Any, ...]) -> bool:
  """Whether every element of `values` is an int or a float (not a bool, a string, ...)."""
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


_POSITIVE = (lambda v: v > 0, 'must be positive')
_NON_NEGATIVE = (lambda v: v >= 0, 'must not be negative')
_FRACTION = (lambda v: 0 <= v < 1, 'must be in [0, 1)')
# Fields of numbers: path -> (test a valid value passes, what the message says it must be).
# The tests say what is valid, so that NaN fails them all.
RULES = {
    **dict.fromkeys(('batch_size', 'eval_batch_size', 'num_classes', 'image_size',
                     'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                     'num_runs', 'loss_scale', 'optimizer.learning_rate',
                     'optimizer.lr_decay_factor', 'dynamic.num_kernels', 'dynamic.tau_start',
                     'dml.num_peers', 'dml.temperature'), _POSITIVE),
    **dict.fromkeys(('num_epochs', 'dml.weight',
                     'optimizer.weight_decay', 'optimizer.warmup_epochs',
                     'dynamic.tau_epochs'), _NON_NEGATIVE),
    **dict.fromkeys(('label_smoothing', 'dropout_rate', 'optimizer.momentum'), _FRACTION),
    'width': (lambda v: v > 1 / 32, 'must be more than 1/32, so that 16-channel layers keep '
                                    'a channel'),
    'eval_every_steps': (lambda v: v >= -1,
                         'must be -1 (once per epoch), 0 (never) or positive'),
    'seed': (lambda v: -2**31 <= v < 2**31, 'must fit in int32 (run r uses seed + r)'),
    'normalize_mean': (lambda t: _numbers(t) and len(t) == 3 and all(0 <= v <= 1 for v in t),
                       'must be 3 numbers in [0, 1], one per channel of pixels in [0, 1]'),
    'normalize_std': (lambda t: _numbers(t) and len(t) == 3 and all(0 < v <= 1 for v in t),
                      'must be 3 numbers in (0, 1], one per channel of pixels in [0, 1]'),
    'optimizer.lr_boundaries': (
        lambda t: _numbers(t) and all(a < b for a, b in zip((0, *t), (*t, 1))),
        'must be increasing fractions of the run, in (0, 1)'),
    # Each method's own fields (methods.base.Method.rules).
    **{path: rule for method in methods.METHODS.values() for path, rule in method.rules.items()},
}
IMAGE_SIZES = {'cifar10': 32, 'cifar100': 32}  # Datasets whose images have one size.


def profiled_steps(value: str) -> tuple[int, int] | None:
  """config.profile_steps 'a,b' -> (a, b), the trace covering steps a+1..b; '' -> None.

  Raises:
    ConfigError: `value` is not '' nor two integers 0 <= a < b.
  """
  if not value:
    return None
  first, comma, last = value.partition(',')
  if not (comma and first.strip().isdecimal() and last.strip().isdecimal()
          and int(first) < int(last)):
    raise ConfigError(f"profile_steps must be 'a,b' with integers 0 <= a < b (trace steps "
                      f"a+1..b), or '' for none, got {value!r}.")
  return int(first), int(last)


def _rule_problems(path: str, value: Any, where: str = '') -> Iterator[str]:
  """What RULES[path] finds wrong with `value` (given in `where`, e.g. ' in runs.seed')."""
  valid, must = RULES[path]
  if isinstance(value, float) and not math.isfinite(value):
    must = 'must be finite'
  elif valid(value):
    return
  yield f'{path} {must}, got {value}{where}.'


def _value_problems(config: ml_collections.ConfigDict, num_devices: int,
                    num_processes: int) -> Iterator[str]:
  choices = {'method': methods.METHODS, 'model': backbones.BACKBONES,
             'dataset': input_pipeline.DATASETS,
             'optimizer.schedule': optimizer.SCHEDULES, 'parallel': parallel.KINDS,
             'distributed': distributed.MODES, 'dtype': model_lib.DTYPES,
             'kernels.peer_conv': ('auto', *conv.FORMS),
             'kernels.dynamic_conv': ('auto', *dynamic_conv.FORMS),
             # Each method's own (methods.base.Method.choices).
             **{path: allowed for method in methods.METHODS.values()
                for path, allowed in method.choices.items()}}
  for path, allowed in choices.items():
    value = get_field(config, path)
    if value not in allowed:
      yield f"Unknown {path} {value!r}; choose one of {', '.join(map(str, allowed))}."
  for name in config.dml.models:
    if name not in backbones.BACKBONES:
      yield (f"Unknown model {name!r} in dml.models; choose from "
             f"{', '.join(backbones.BACKBONES)}.")
  if config.dml.models and len(config.dml.models) != config.dml.num_peers:
    yield (f'dml.models names {len(config.dml.models)} models but dml.num_peers is '
           f'{config.dml.num_peers}; give one model per peer.')
  if config.method in methods.METHODS:
    yield from methods.METHODS[config.method].problems(config)

  for path in RULES:
    yield from _rule_problems(path, get_field(config, path))
  try:
    profiled_steps(config.profile_steps)
  except ConfigError as e:
    yield str(e)
  size = IMAGE_SIZES.get(config.dataset)
  if size and config.image_size != size:
    yield (f'image_size must be {size} for dataset={config.dataset} (its images are '
           f'{size}x{size}), got {config.image_size}.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    yield 'Set num_epochs or num_train_steps to a positive number.'
  for path in ('batch_size', 'eval_batch_size'):
    size = get_field(config, path)
    if size > 0 and size % num_devices:
      yield f'{path}={size} is not divisible by the {num_devices} devices.'
  if config.parallel == 'pmap' and num_processes > 1:  # PmapParallel spans local devices only.
    yield (f"parallel='pmap' runs in one process, not {num_processes}; use "
           "parallel='shard_map'.")


def _run_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
  """What is wrong with the number of runs and the per-run lists of config.runs
  (sila_jax/training/runs.py)."""
  models = config.num_runs * config.dml.num_peers
  if models > runs.MAX_MODELS:
    yield (f'num_runs x dml.num_peers is {models}, more than {runs.MAX_MODELS}: every run and '
           'peer has convolutions of its own in the computation (kernels.peer_conv), so '
           'start-up takes time in proportion to their number.')
  for name, path in runs.FIELDS.items():
    given = tuple(config.runs[name])
    if given and len(given) != config.num_runs:
      yield (f'runs.{name} lists {len(given)} values but num_runs is {config.num_runs}; give '
             f'one {path} per run, or () for {path} in every run.')
    if path in RULES:
      kind = int if name == 'seed' else (int, float)
      if any(isinstance(v, bool) or not isinstance(v, kind) for v in given):
        yield f'runs.{name} must list numbers{" (integers)" if kind is int else ""}, got {given}.'
      else:
        for value in given:
          yield from _rule_problems(path, value, f' in runs.{name}')
    elif not all(isinstance(v, bool) for v in given):  # A switch: True or False per run.
      yield f'runs.{name} must list True or False, got {given}.'


def _distinct_runs(config: ml_collections.ConfigDict) -> list[int]:
  """Runs whose checks find every problem of all: one per distinct combination of per-run
  settings but the seed, and those of the lowest and highest seed (a range check)."""
  if config.num_runs < 1:
    return []
  seeds = runs.values(config, 'seed')
  first = {}
  for r, combination in enumerate(zip(*(runs.values(config, name) for name in runs.FIELDS
                                        if name != 'seed'))):
    first.setdefault(combination, r)
  return sorted({*first.values(), seeds.index(min(seeds)), seeds.index(max(seeds))})


def check_config(config: ml_collections.ConfigDict, num_devices: int,
                 num_processes: int = 1) -> None:
  """Raises ConfigError naming every unknown field and invalid value of `config` (of each
  run's config, where config.runs gives runs their own values)."""
  known = known_fields()
  problems = [unknown_field_message(p, known) for p in field_paths(config) if p not in known]
  if not problems:
    problems = list(dict.fromkeys(_run_problems(config))) if config.num_runs > 0 else []
  if not problems:
    per_run = [runs.run_config(config, r) for r in _distinct_runs(config)] or [config]
    problems = list(dict.fromkeys(problem for run_config in per_run for problem in
                                  _value_problems(run_config, num_devices, num_processes)))
  if problems:
    raise ConfigError(' '.join(problems))
