"""Orbax checkpoints of the whole TrainState; main-branch-only restore for evaluation."""
import logging
import os
from typing import Any

from absl import logging as absl_logging
import flax
import jax
import orbax.checkpoint as ocp

from sila_jax import model as model_lib


def quiet_orbax_logs() -> None:
  """Drops orbax's INFO lines (several per save) from the absl log; warnings stay."""
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or '/orbax/' not in record.pathname)


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Manager over <workdir>/checkpoints keeping the `keep` newest steps."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, state: Any) -> None:
  """Saves `state` (a TrainState of global arrays) under its step; asynchronous."""
  manager.save(int(state.step), args=ocp.args.PyTreeSave(flax.serialization.to_state_dict(state)))


def restore_latest(manager: ocp.CheckpointManager, template: Any) -> Any | None:
  """The latest checkpoint restored into `template`'s structure, or None if there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  target = flax.serialization.to_state_dict(template)
  restored = manager.restore(step, args=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
  return flax.serialization.from_state_dict(template, restored)


def restore_main_branch(manager: ocp.CheckpointManager,
                        abstract_variables: dict[str, Any]) -> tuple[int, dict[str, Any]]:
  """Reads only {backbone, head} parameters and BatchNorm statistics of the latest step.

  Args:
    abstract_variables: {'params', 'batch_stats'} of the plain model, as
      jax.ShapeDtypeStruct leaves; the checkpoint must match them.
  Returns:
    (step, variables) ready for `model.apply`. Siamese heads, if saved, are not read.
  """
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}.')
  target = model_lib.main_branch(abstract_variables)
  restored = manager.restore(step, args=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return step, jax.tree_util.tree_map(jax.numpy.asarray, restored)
