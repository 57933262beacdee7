"""Checkpoints: atomic orbax writes, verified reads, the newest few and the best kept.

<workdir>/checkpoints/<step> holds the newest `config.keep_checkpoints` steps and
<workdir>/best/<step> the one with the best validation accuracy. Each has two items:
'state' (the whole TrainState, as host arrays) and 'meta' (the run's config, a SHA-256
digest of every array, the validation accuracy if any). Orbax writes a checkpoint into a
temporary directory and renames it when complete, so a write cut off never looks like a
checkpoint; the digests catch files damaged afterwards.
"""
import contextlib
import hashlib
import os
import time
from typing import Any

from absl import logging
import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sila_jax import methods
from sila_jax.config_checks import get_field
from sila_jax.configs import default
from sila_jax.errors import CheckpointError, first_line
from sila_jax.models import model as model_lib
from sila_jax.training import distributed

LATEST, BEST = 'latest', 'best'
DIRECTORIES = {LATEST: 'checkpoints', BEST: 'best'}  # Under the workdir.
CORRUPT = 'corrupt_checkpoints'  # Where training moves checkpoints it cannot read.
# Fields that fix the shapes of the main branch; training restores what these and the
# method's fields (methods.structure_fields) fix.
MAIN_BRANCH_FIELDS = ('model', 'width', 'num_classes', 'dynamic.num_kernels', 'dml.num_peers',
                      'dml.models', 'num_runs')
# TrainState fields added since checkpoints were first written; an older checkpoint restores
# them as zeros (its runs had not diverged: training stopped at a non-finite loss then).
ADDED_STATE_FIELDS = ('diverged_step',)
# The trees that carry the peer axis (sila_jax/methods/peers.py). A single model's checkpoint
# written before a single model was one peer holds them without it: 'params/backbone/...'
# (R, ...) where today's reads 'params/0/backbone/...' (R, 1, ...); `restore` converts it.
PEER_TREES = ('params', 'batch_stats', 'opt_state')


def create_manager(workdir: str, which: str = LATEST, keep: int = 1) -> ocp.CheckpointManager:
  """Manager over <workdir>/checkpoints (which=LATEST) or <workdir>/best, keeping `keep` steps."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), DIRECTORIES[which]),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True))


def _host(x: Any) -> np.ndarray:
  """One copy of a (replicated) array on the host."""
  return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def _digests(tree: dict[str, Any]) -> dict[str, str]:
  """{'params/backbone/.../kernel': sha256 of dtype, shape and bytes} for every array."""
  flat = flax.traverse_util.flatten_dict(tree, sep='/')
  return {path: hashlib.sha256(f'{x.dtype}{x.shape}'.encode() + x.tobytes()).hexdigest()
          for path, x in flat.items()}


def save(manager: ocp.CheckpointManager, state: Any, config: ml_collections.ConfigDict, *,
         attention_temperature: float = 1.0, val_accuracy: float | None = None) -> None:
  """Saves `state` (a TrainState) under its step; the write finishes in the background.

  `attention_temperature` (dynamic convolutions) is the one evaluation of this step uses.
  """
  tree = jax.tree_util.tree_map(_host, flax.serialization.to_state_dict(state))
  step = int(tree['step'])
  meta = {'config': config.to_dict(), 'digests': _digests(tree), 'step': step,
          'attention_temperature': attention_temperature, 'val_accuracy': val_accuracy,
          'diverged_steps': np.asarray(tree['diverged_step']).reshape(-1).tolist()}
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(tree), meta=ocp.args.JsonSave(meta)))


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The 'meta' item of `step`."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def check_model(meta: dict[str, Any], config: ml_collections.ConfigDict,
                fields: tuple[str, ...], where: str) -> None:
  """Raises CheckpointError if the checkpoint's model differs from `config`'s in `fields`."""
  if 'num_runs' not in meta['config']:
    raise CheckpointError(f'The checkpoint in {where} was written before runs had their own '
                          'axis (config.num_runs); this version cannot restore it.')

  def saved(field):  # A field added since the checkpoint was written has its default.
    try:
      value = get_field(meta['config'], field)
    except KeyError:
      value = get_field(default.get_config(), field)
    return tuple(value) if isinstance(value, list) else value  # JSON has no tuples.

  differ = [f'{f}={saved(f)!r} (config: {get_field(config, f)!r})'
            for f in fields if saved(f) != get_field(config, f)]
  if differ:
    raise CheckpointError(f'The checkpoint in {where} was written for another model: '
                          f"{', '.join(differ)}.")


def _without_peer_axis(meta: dict[str, Any]) -> bool:
  """Whether the checkpoint of `meta` holds a single model outside the peer axis (PEER_TREES)."""
  return any(path.split('/')[0] in PEER_TREES and not path.split('/')[1].isdigit()
             for path in meta['digests'])


def _drop_peer_axis(target: dict[str, Any]) -> dict[str, Any]:
  """A state dict of K = 1 peer as a checkpoint without the peer axis holds it."""
  drop = lambda x: jax.ShapeDtypeStruct((x.shape[0], *x.shape[2:]), x.dtype)  # noqa: E731
  return {k: jax.tree_util.tree_map(drop, v['0']) if k in PEER_TREES else v
          for k, v in target.items()}


def _add_peer_axis(tree: dict[str, Any]) -> dict[str, Any]:
  """`_drop_peer_axis`' inverse on arrays read back."""
  return {k: {'0': jax.tree_util.tree_map(lambda x: np.expand_dims(x, 1), v)}
          if k in PEER_TREES else v for k, v in tree.items()}


def restore(manager: ocp.CheckpointManager, step: int, target: dict[str, Any],
            meta: dict[str, Any]) -> dict[str, Any]:
  """Reads the arrays of `target` (a subtree of the saved state) and checks their digests.
  A single model's checkpoint from before the peer axis reads as today's (PEER_TREES).

  Raises:
    CheckpointError: a file is missing, truncated or does not match its digest.
  """
  if _without_peer_axis(meta):
    return _add_peer_axis(_restore_checked(manager, step, _drop_peer_axis(target), meta))
  return _restore_checked(manager, step, target, meta)


def _restore_checked(manager: ocp.CheckpointManager, step: int, target: dict[str, Any],
                     meta: dict[str, Any]) -> dict[str, Any]:
  """`restore` of a checkpoint in the layout of `target`."""
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                        target)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=True)))['state']
  except Exception as e:  # Orbax and tensorstore raise many types for a damaged file.
    raise CheckpointError(f'unreadable ({type(e).__name__}: {first_line(e)})') from e
  digests = _digests(restored)
  bad = [path for path, digest in digests.items() if meta['digests'].get(path) != digest]
  if bad:
    raise CheckpointError(f'{len(bad)} array(s) do not match their digest, e.g. {bad[0]}')
  return restored


def restore_newest_readable(manager: ocp.CheckpointManager, abstract_state: Any,
                            config: ml_collections.ConfigDict) -> Any | None:
  """The newest checkpoint that reads back intact, as a state like `abstract_state`.

  Checkpoints that cannot be read are moved to <workdir>/corrupt_checkpoints (nothing is
  deleted) and the next older one is tried. Returns None if there is no checkpoint. With
  several processes, a checkpoint is used only if every process read it intact, process 0
  alone moves it aside, and all return the same step.

  Raises:
    CheckpointError: a checkpoint was written for another model.
  """
  directory = str(manager.directory)
  target = flax.serialization.to_state_dict(abstract_state)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      meta = read_meta(manager, step)
    except Exception as e:  # A damaged or missing meta item.
      problem = f'unreadable metadata ({type(e).__name__}: {first_line(e)})'
    else:
      check_model(meta, config, MAIN_BRANCH_FIELDS + methods.structure_fields(config),
                  directory)
      added = [k for k in ADDED_STATE_FIELDS if k in target and k not in meta['digests']]
      try:
        restored = restore(manager, step, {k: v for k, v in target.items() if k not in added},
                           meta)
        restored.update({k: np.zeros(target[k].shape, target[k].dtype) for k in added})
        problem = None
      except CheckpointError as e:
        problem = str(e)
    if distributed.all_processes(problem is None):
      return flax.serialization.from_state_dict(abstract_state, restored)
    if jax.process_index() == 0:
      moved = _move_aside(directory, step)
      logging.warning('Checkpoint at step %d is corrupt: %s. Moved it to %s; trying the '
                           'previous one.', step, problem or 'unreadable in another process',
                           moved)
    distributed.barrier(f'checkpoint {step} set aside')
    manager.reload()
  return None


def _move_aside(directory: str, step: int) -> str:
  corrupt = os.path.join(os.path.dirname(directory), CORRUPT)
  os.makedirs(corrupt, exist_ok=True)
  destination = os.path.join(corrupt, f'{os.path.basename(directory)}_{step}')
  if os.path.exists(destination):  # The same step went bad before.
    destination += time.strftime('_%Y%m%d-%H%M%S')
  os.rename(os.path.join(directory, str(step)), destination)
  return destination


def restore_variables(workdir: str, config: ml_collections.ConfigDict, abstract: Any,
                      which: str = LATEST) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads only the variables of `abstract` (methods.Method's deployable_abstract: every
  peer's {backbone, head} and their BatchNorm statistics; or its evaluated_abstract, which
  may hold the method's branches) of `workdir`'s latest (or best) checkpoint; the optimizer
  state is not read. `config` is checked against the checkpoint's in the fields that fix
  those arrays.

  Returns:
    (meta, variables): meta has 'step' and 'attention_temperature'; variables are every
    peer's, for methods.Method.predictions or export, with the leading run axis
    (sila_jax/training/runs.py).
  Raises:
    CheckpointError: no checkpoint, a corrupt one, or one written for another model.
  """
  target = flax.serialization.to_state_dict(abstract)
  directory = os.path.join(os.path.abspath(workdir), DIRECTORIES[which])
  if not os.path.isdir(directory):  # Reading creates nothing.
    raise CheckpointError(f'No checkpoint in {directory}.')
  with contextlib.closing(create_manager(workdir, which)) as manager:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f'No checkpoint in {manager.directory}.')
    try:
      meta = read_meta(manager, step)
    except Exception as e:
      raise CheckpointError(f'The checkpoint at step {step} in {manager.directory} is corrupt: '
                            f'unreadable metadata ({first_line(e)}).') from e
    main_branch_only = all(set(group) <= set(model_lib.MAIN_BRANCH)
                           for group in abstract['params'])
    check_model(meta, config, MAIN_BRANCH_FIELDS if main_branch_only
                else MAIN_BRANCH_FIELDS + methods.structure_fields(config),
                str(manager.directory))
    try:
      variables = restore(manager, step, target, meta)
    except CheckpointError as e:
      raise CheckpointError(f'The checkpoint at step {step} in {manager.directory} is corrupt: '
                            f'{e}.') from e
  return ({'attention_temperature': 1.0, **meta, 'step': step},
          flax.serialization.from_state_dict(abstract, variables))


def best_accuracy(manager: ocp.CheckpointManager) -> float:
  """Validation accuracy of the checkpoint in `manager` (the best one), or -inf if none."""
  step = manager.latest_step()
  if step is None:
    return -np.inf
  try:
    return read_meta(manager, step)['val_accuracy']
  except Exception as e:  # A damaged best checkpoint is replaced by the next best.
    logging.warning('Best checkpoint at step %d is unreadable (%s); it will be replaced.',
                         step, first_line(e))
    return -np.inf


def save_best(manager: ocp.CheckpointManager, state: Any, config: ml_collections.ConfigDict, *,
              attention_temperature: float, val_accuracy: float) -> None:
  """Replaces the best checkpoint with `state`; a newer one (from before a resume) goes."""
  for step in manager.all_steps():
    if step >= int(_host(state.step)):
      manager.delete(step)
  save(manager, state, config, attention_temperature=attention_temperature,
       val_accuracy=val_accuracy)


class Checkpoints:
  """A run's checkpoints: the newest `config.keep_checkpoints` in <workdir>/checkpoints and the
  best on validation in <workdir>/best. Closing waits for the checkpoints being written."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self._config = config
    self._latest = create_manager(workdir, LATEST, config.keep_checkpoints)
    self._best = create_manager(workdir, BEST)
    self._best_accuracy = best_accuracy(self._best)

  def restore(self, abstract_state: Any) -> Any | None:
    """`restore_newest_readable` of the latest checkpoints."""
    return restore_newest_readable(self._latest, abstract_state, self._config)

  @property
  def directory(self) -> str:
    """Where the latest checkpoints are: <workdir>/checkpoints."""
    return str(self._latest.directory)

  def save(self, state: Any, attention_temperature: float) -> None:
    save(self._latest, state, self._config, attention_temperature=attention_temperature)

  def wait(self) -> None:
    """Returns once the checkpoints being written are complete."""
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def save_if_best(self, state: Any, attention_temperature: float, val_accuracy: float) -> None:
    """Makes `state` the best checkpoint if its validation accuracy beats the best one's."""
    if val_accuracy > self._best_accuracy:
      self._best_accuracy = val_accuracy
      save_best(self._best, state, self._config, attention_temperature=attention_temperature,
                val_accuracy=val_accuracy)

  def close(self) -> None:
    self._latest.close()
    self._best.close()
