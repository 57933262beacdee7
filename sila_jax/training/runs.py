"""Many runs as one computation: R independent runs stacked along a leading run axis.

Every leaf of the train state (parameters, BatchNorm statistics, optimizer state, key) but
the step, which all runs share, and every metric carries a leading axis of
`config.num_runs` = R, and the step runs under `jax.vmap` over it. Run r has its own seed
(initialisation, data order, augmentation, dropout) and its own numeric loss settings, the
fields of `FIELDS`: `config.runs.<name>` lists one value per run, or is () for the config
field's value in every run (seeds: config.seed + r). A single model is the case R = 1; DML
peers (K per run) sit inside it.
"""
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sila_jax.training import metrics

# config.runs.<name> -> the config field it sets per run. These are the settings a run
# reads as numbers inside the step, so runs that differ only in them share one computation.
FIELDS = {'seed': 'seed', 'sila_weight': 'sila.weight', 'sila_kl_weight': 'sila.kl_weight',
          'dml_weight': 'dml.weight', 'label_smoothing': 'label_smoothing',
          'loss_scale': 'loss_scale', 'learning_rate': 'optimizer.learning_rate',
          'weight_decay': 'optimizer.weight_decay',
          'rescale_backbone_grad': 'sila.rescale_backbone_grad',
          'one_temperature': 'one.temperature',
          'clilr_beta': 'clilr.beta', 'clilr_temperature': 'clilr.temperature',
          'byot_alpha': 'byot.alpha', 'byot_temperature': 'byot.temperature',
          'byot_feature_weight': 'byot.feature_weight'}
# The most models (num_runs x dml.num_peers) one computation holds: the step applies each
# one's convolutions on their own (kernels.peer_conv), so start-up grows with their number.
MAX_MODELS = 256


def values(config: ml_collections.ConfigDict, name: str) -> tuple[Any, ...]:
  """The R values of config.runs.<name>, defaulted from its config field."""
  given = tuple(config.runs[name])
  if given:
    return given
  if name == 'seed':
    return tuple(config.seed + r for r in range(config.num_runs))
  return (config[FIELDS[name]],) * config.num_runs


def settings(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Every run's numeric settings: {name in FIELDS: (R,) array}, int32 seeds, float32 rest
  (booleans as 0.0 / 1.0)."""
  return {name: np.asarray(values(config, name), np.int32 if name == 'seed' else np.float32)
          for name in FIELDS}


def run_config(config: ml_collections.ConfigDict, run: int) -> ml_collections.ConfigDict:
  """The config of run `run` alone: num_runs 1, FIELDS set to its values, runs.* empty.

  Training it alone gives (within rounding) what run `run` of `config` gives.
  """
  single = config.copy_and_resolve_references()
  single.update_from_flattened_dict({path: values(config, name)[run]
                                     for name, path in FIELDS.items()})
  single.update_from_flattened_dict({f'runs.{name}': () for name in FIELDS})
  single.num_runs = 1
  return single


def init(create_state: Callable[[jax.Array], Any], config: ml_collections.ConfigDict) -> Any:
  """Every run's initial state, leaves (R, ...) but the step: create_state(PRNGKey(seed_r))
  for each run."""
  seeds = settings(config)['seed']
  stacked = jax.vmap(lambda seed: create_state(jax.random.PRNGKey(seed)))(seeds)
  return stacked.replace(step=stacked.step[0])


def _state_axes(state: Any) -> Any:
  """vmap axes of a train state: 0 for every leaf but the shared step."""
  return jax.tree_util.tree_map(lambda _: 0, state).replace(step=None)


def stack_abstract(tree: Any, num_runs: int) -> Any:
  """jax.ShapeDtypeStruct leaves (...) -> (num_runs, ...)."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((num_runs, *x.shape), x.dtype),
                                tree)


def vmap_step(step_fn: Callable, config: ml_collections.ConfigDict,
              batch_axis: int | None) -> Callable:
  """(state, batch) -> step_fn(state_r, batch_r, settings_r) for every run r; state leaves
  (R, ...) but the step (as `init` makes them), metrics (R,).

  step_fn: (state, batch, settings) -> (state, metrics), `settings` being {name in FIELDS:
    scalar}, the run's.
  batch_axis: the batch's run axis, or None when every run reads the same batch (the
  device-resident shard, from which each run draws its own examples).
  """
  run_settings = settings(config)

  def step(state, batch):
    axes = _state_axes(state)
    return jax.vmap(step_fn, in_axes=(axes, batch_axis, 0), out_axes=(axes, 0))(
        state, batch, run_settings)
  return step


def take(tree: Any, run: int) -> Any:
  """Run `run`'s slice of a stacked tree."""
  return jax.tree_util.tree_map(lambda x: x[run], tree)


def named_run(run: int, num_runs: int) -> int | None:
  """The run under which `summarize` names run `run`'s own values (metrics.name's `run`):
  None for the only run, whose values are the summary's own."""
  return run if num_runs > 1 else None


def summarize(per_run: dict[str, Any], diverged_steps: Any = None) -> dict[str, float]:
  """{name: (R,) values} -> the means over runs under each name; with R > 1 also each run's
  value as 'run_<r>/<name>' and the sample standard deviation over runs as '<name>_std'.

  diverged_steps: (R,) ints, the step at which each run diverged (0: it has not), or None.
  Diverged runs are left out of the means and deviations; their own values stay, with
  'run_<r>/diverged_step' for every run and the count 'diverged_runs'.
  """
  per_run = {name: np.asarray(value, np.float64) for name, value in per_run.items()}
  num_runs = len(next(iter(per_run.values())))
  steps = (np.zeros(num_runs, np.int64) if diverged_steps is None
           else np.asarray(diverged_steps, np.int64))
  live = steps == 0
  summary = {name: float(np.mean(value[live])) if live.any() else float('nan')
             for name, value in per_run.items()}
  if num_runs > 1:
    for name, value in per_run.items():
      summary[f'{name}_std'] = (float(np.std(value[live], ddof=1)) if live.sum() > 1
                                else float('nan'))
    for r in range(num_runs):
      summary.update({metrics.name(name, run=r): float(value[r])
                      for name, value in per_run.items()})
    if diverged_steps is not None:
      summary['diverged_runs'] = int(np.sum(~live))
      summary.update({metrics.name('diverged_step', run=r): int(steps[r])
                      for r in range(num_runs)})
  return summary


def diverged(diverged_steps: Any) -> list[int | None]:
  """(R,) steps at which runs diverged (0: not) -> per run, that step or None."""
  return [int(step) or None for step in np.asarray(diverged_steps).reshape(-1)]
