"""`train_and_evaluate`: the whole run, top to bottom, in headed sections."""
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from sila_jax import checkpoint
from sila_jax import evaluate as evaluate_lib
from sila_jax import input_pipeline
from sila_jax import model as model_lib
from sila_jax import optimizer as optimizer_lib
from sila_jax import parallel as parallel_lib
from sila_jax import train_step as train_step_lib


def _check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int) -> None:
  for field in ('batch_size', 'eval_batch_size'):
    size = config[field]
    if size <= 0 or size % num_devices:
      raise ValueError(f'{field}={size} must be a positive multiple of the {num_devices} devices.')


def _write_metrics(workdir: str, record: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the model `config` describes, checkpointing into and logging to `workdir`.

  Resumes from the latest checkpoint in `workdir` if there is one.
  Returns the last training and validation metrics.
  """
  os.makedirs(workdir, exist_ok=True)

  # Devices: shard_map spans every device of every process; pmap this process's.
  devices = jax.devices() if config.parallel == 'shard_map' else jax.local_devices()
  _check_batch_sizes(config, len(devices))
  local_batch = config.batch_size // jax.process_count()

  # Input.
  train_data = input_pipeline.load_split(config, config.train_split, drop_remainder=True)
  eval_data = input_pipeline.load_split(config, config.eval_split, drop_remainder=False)
  if train_data.num_classes != config.num_classes:
    raise ValueError(f'num_classes={config.num_classes} but {config.dataset} has '
                     f'{train_data.num_classes} classes.')
  steps_per_epoch = train_data.num_examples * jax.process_count() // config.batch_size
  num_train_steps = (config.num_train_steps if config.num_train_steps > 0
                     else config.num_epochs * steps_per_epoch)
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch

  # Model, optimizer, state.
  model = model_lib.create_model(config, bn_axis_name=train_step_lib.AXIS)
  schedule = optimizer_lib.learning_rate_schedule(config, num_train_steps, steps_per_epoch)
  tx = optimizer_lib.create_optimizer(config, schedule)
  image_shape = (config.image_size, config.image_size, 3)
  state = train_step_lib.create_train_state(model, tx, jax.random.PRNGKey(config.seed), image_shape)
  logging.info('Parameters: %d in training, %d at test time.',
               model_lib.count_params(state.params),
               model_lib.count_params(model_lib.main_branch({'params': state.params})['params']))

  # Checkpoint: resume where a previous run of this workdir stopped.
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)
  state = checkpoint.restore_latest(manager, state) or state
  start_step = int(state.step)
  if start_step:
    logging.info('Resumed from the checkpoint at step %d.', start_step)

  # Parallel update step.
  parallel = parallel_lib.create_parallel(
      config.parallel, train_step_lib.make_train_step(model, tx, schedule, config), devices)
  device_state = parallel.put_state(state)

  # Evaluator: the plain model, main-branch variables only.
  eval_step = evaluate_lib.make_eval_step(model_lib.create_model(config, main_branch_only=True))
  local_eval_batch = config.eval_batch_size // jax.process_count()

  def run_eval(step: int) -> dict[str, Any]:
    current = parallel.unreplicate(device_state)
    variables = model_lib.main_branch(
        {'params': current.params, 'batch_stats': current.batch_stats})
    metrics = evaluate_lib.evaluate(
        eval_step, variables, input_pipeline.eval_batches(eval_data, config, local_eval_batch),
        parallel.mesh)
    logging.info('step %d  val accuracy %.4f  val loss %.4f  (%d examples)', step,
                 metrics['accuracy'], metrics['loss'], metrics['num_examples'])
    _write_metrics(workdir, {'step': step, **{f'val_{k}': v for k, v in metrics.items()}})
    return metrics

  # Training loop.
  batches = input_pipeline.train_batches(train_data, config, local_batch,
                                         seed=config.seed + jax.process_index(),
                                         start_step=start_step)
  logging.info('Training steps %d..%d (%d per epoch), global batch %d on %d devices.',
               start_step, num_train_steps, steps_per_epoch, config.batch_size, len(devices))
  train_metrics, pending, tick = {}, [], time.perf_counter()
  for step in range(start_step + 1, num_train_steps + 1):
    batch = next(batches)
    if batch['label'].max() >= config.num_classes or batch['label'].min() < 0:
      raise ValueError(f'Label out of range [0, {config.num_classes}) in the batch of step {step}.')
    device_state, metrics = parallel.train_step(device_state, parallel.put_batch(batch))
    pending.append(metrics)

    if step % config.log_every_steps == 0 or step == num_train_steps:
      fetched = jax.device_get([parallel.unreplicate(m) for m in pending])
      train_metrics = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      if not np.isfinite(train_metrics['loss']):
        raise FloatingPointError(f'Loss is {train_metrics["loss"]} at step {step}; stopping.')
      elapsed, tick = time.perf_counter() - tick, time.perf_counter()
      train_metrics['images_per_sec'] = len(pending) * config.batch_size / elapsed
      pending = []
      logging.info('step %d  %s', step, '  '.join(f'{k} {v:.4g}' for k, v in train_metrics.items()))
      _write_metrics(workdir, {'step': step, **train_metrics})

    if step % config.checkpoint_every_steps == 0 or step == num_train_steps:
      checkpoint.save(manager, parallel.unreplicate(device_state))
    if step % eval_every == 0 or step == num_train_steps:
      val_metrics = run_eval(step)
      tick = time.perf_counter()  # Keep evaluation out of the throughput figure.

  manager.wait_until_finished()
  if start_step >= num_train_steps:
    logging.info('Run already complete at step %d.', start_step)
    val_metrics = run_eval(start_step)
  return {'step': max(start_step, num_train_steps), 'train': train_metrics, 'val': val_metrics}
