"""`train_and_evaluate`: the whole run, top to bottom, in headed sections."""
import contextlib
import functools
import itertools
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sila_jax import checkpoint
from sila_jax import config_checks
from sila_jax import distributed
from sila_jax import evaluate as evaluate_lib
from sila_jax import input_pipeline
from sila_jax import model as model_lib
from sila_jax import optimizer as optimizer_lib
from sila_jax import parallel as parallel_lib
from sila_jax import peers
from sila_jax import runs
from sila_jax import train_step as train_step_lib
from sila_jax.errors import DataError, NonFiniteLossError

METRICS = 'metrics.jsonl'
# Fields of a training record that depend on the machine's speed, not on the run.
TIMINGS = ('images_per_sec', 'input_wait')


def _read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_metrics(workdir: str, record: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, METRICS), 'a') as f:
      f.write(json.dumps(record) + '\n')


def _drop_metrics_after(workdir: str, step: int) -> None:
  """Forgets records of steps a resumed run will redo (they were lost with the process)."""
  records = _read_metrics(workdir)
  if jax.process_index() == 0 and any(r['step'] > step for r in records):
    path = os.path.join(workdir, METRICS)
    with open(path + '.tmp', 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in records if r['step'] <= step)
    os.replace(path + '.tmp', path)


def _last_metrics(workdir: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """The last (train, val) metrics recorded in <workdir>/metrics.jsonl."""
  train, val = {}, {}
  for record in _read_metrics(workdir):
    if 'loss' in record:
      train = {k: v for k, v in record.items() if k != 'step'}
    if 'val_accuracy' in record:
      val = {k[len('val_'):]: v for k, v in record.items() if k.startswith('val_')}
  return train, val


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[Callable[[], bool]]:
  """Yields a function telling whether SIGTERM arrived; the handler only sets a flag."""
  received = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield received.is_set  # Signals reach the main thread only.
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
  try:
    yield received.is_set
  finally:
    signal.signal(signal.SIGTERM, previous)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every element of every array in `tree` is finite."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _check_finite(pending: list[tuple[int, Any]], state: Any) -> None:
  """Raises NonFiniteLossError at the first pending (step, metrics) whose loss is not finite,
  or if `state`'s parameters or BatchNorm statistics are not finite."""
  losses = jax.device_get([metrics['loss'] for _, metrics in pending])
  for (step, _), loss in zip(pending, losses):
    bad = np.flatnonzero(~np.isfinite(loss))  # loss: (R,), one per run.
    if bad.size:
      where = f' in run {bad[0]}' if len(loss) > 1 else ''
      raise NonFiniteLossError(f'Loss is {float(loss[bad[0]])} at step {step}{where}; stopping. '
                               'The last checkpoint, written before it, is intact.')
  if not _all_finite((state.params, state.batch_stats)):
    raise NonFiniteLossError(f'Parameters are not finite after step {int(state.step)}; '
                             'stopping. The last checkpoint, written before it, is intact.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the model `config` describes, checkpointing into and logging to `workdir`.

  Resumes from the newest readable checkpoint in `workdir`, exactly where it stopped.
  SIGTERM saves a checkpoint and returns. Every mistake in the config, the data or an
  existing checkpoint raises a UserError before anything is compiled.
  Returns {'status': 'trained' | 'preempted' | 'complete', 'step', 'train', 'val'}.
  """
  # Devices and config: shard_map spans every device of every process; pmap this process's.
  devices = jax.devices() if config.parallel == 'shard_map' else jax.local_devices()
  config_checks.check_config(config, len(devices), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  device_batch = config.batch_size // len(devices)

  # Input: the training split in one shard per device, read by the device's process.
  shard_ids = input_pipeline.device_shards(devices)
  train_shards, shard_size = input_pipeline.load_train_shards(config, devices)
  local_eval_batch = config.eval_batch_size // jax.process_count()
  eval_data = input_pipeline.load_eval_shard(config, config.eval_split, local_eval_batch)
  steps_per_epoch = shard_size // device_batch
  if not steps_per_epoch:
    raise DataError(f'The training split gives {shard_size * len(devices)} examples '
                    f'({shard_size} per device), fewer than one batch of {config.batch_size}.')
  num_train_steps = (config.num_train_steps if config.num_train_steps > 0
                     else config.num_epochs * steps_per_epoch)
  eval_every = {-1: steps_per_epoch, 0: None}.get(config.eval_every_steps,
                                                  config.eval_every_steps)

  # Model (or DML peers), optimizer, state: the newest readable checkpoint, or a fresh start.
  schedule = optimizer_lib.learning_rate_schedule(config, num_train_steps, steps_per_epoch)
  tx = optimizer_lib.create_optimizer(config, schedule)
  temperature_schedule = (optimizer_lib.attention_temperature_schedule(config, steps_per_epoch)
                          if any(map(model_lib.is_dynamic, peers.peer_models(config))) else None)

  def attention_temperature(step: int) -> float:
    return float(temperature_schedule(step)) if temperature_schedule else 1.0
  image_shape = (config.image_size, config.image_size, 3)
  dml = peers.is_dml(config)
  if dml:
    groups = peers.create_groups(config, bn_axis_name=train_step_lib.AXIS)
    step_fn = train_step_lib.make_peer_train_step(groups, tx, schedule, config,
                                                  temperature_schedule)
    create_state = functools.partial(train_step_lib.create_peer_train_state, groups, tx)
    main_branch = peers.main_branch
  else:
    model = model_lib.create_model(config, bn_axis_name=train_step_lib.AXIS)
    step_fn = train_step_lib.make_train_step(model, tx, schedule, config, temperature_schedule)
    create_state = functools.partial(train_step_lib.create_train_state, model, tx)
    main_branch = model_lib.main_branch

  def initial_state():  # Also traced abstractly, so that a bad checkpoint compiles nothing.
    return runs.init(lambda key: create_state(key, image_shape), config)

  # Closing the managers waits for checkpoints being written, whatever stops the run.
  with contextlib.closing(checkpoint.create_manager(workdir, checkpoint.LATEST,
                                                   config.keep_checkpoints)) as manager, \
       contextlib.closing(checkpoint.create_manager(workdir, checkpoint.BEST)) as best_manager, \
       _sigterm_flag() as sigterm_received:
    state = checkpoint.restore_newest_readable(manager, jax.eval_shape(initial_state), config)
    start_step = 0 if state is None else int(state.step)
    if start_step >= num_train_steps:
      logging.info('The run in %s is already complete (step %d of %d); nothing to do.',
                   workdir, start_step, num_train_steps)
      train_metrics, val_metrics = _last_metrics(workdir)
      return {'status': 'complete', 'step': start_step, 'train': train_metrics, 'val': val_metrics}
    if state is None:
      state = initial_state()
    else:
      epoch, index = divmod(start_step * device_batch, shard_size)
      logging.info('Resuming at step %d: epoch %d, example %d of %d per device.', start_step,
                   epoch, index, shard_size)
    _drop_metrics_after(workdir, start_step)
    best_accuracy = checkpoint.best_accuracy(best_manager)
    logging.info('Parameters per run: %d in training, %d at test time; %d run(s).',
                 model_lib.count_params(runs.take(state.params, 0)),
                 evaluate_lib.deployable_params(
                     config, {'params': state.params, 'batch_stats': state.batch_stats}),
                 config.num_runs)

    # Parallel update step of every run, each drawing its batch from the device-resident
    # shards or taking the one the host gathered. DML peers share each augmented batch
    # unless dml.independent_augment gives each a view.
    num_views = config.dml.num_peers if dml and config.dml.independent_augment else 1
    if config.on_device:
      input_step = input_pipeline.device_input_step(step_fn, config, train_step_lib.AXIS,
                                                    shard_size, device_batch, num_views)
    else:
      input_step = input_pipeline.host_input_step(step_fn, config, train_step_lib.AXIS, num_views)
    every_run = runs.vmap_step(input_step, config, batch_axis=None if config.on_device else 1)
    parallel = parallel_lib.create_parallel(config.parallel, every_run, devices)
    device_state = parallel.put_state(state)
    if config.on_device:
      resident = parallel.put_batch({'image': np.concatenate([s.images for s in train_shards]),
                                     'label': np.concatenate([s.labels for s in train_shards])})
      batches = itertools.repeat(resident)
    else:
      batches = map(parallel.put_batch, input_pipeline.host_batches(
          train_shards, shard_ids, runs.settings(config)['seed'], device_batch, start_step))

    # Evaluator: the plain model (every peer's), main-branch variables only.
    eval_step = evaluate_lib.make_main_branch_eval_step(config)
    eval_batches = evaluate_lib.EvalBatches(eval_data, parallel.mesh, config.on_device)

    def run_eval(step: int) -> dict[str, Any]:
      current = parallel.unreplicate(device_state)
      variables = main_branch({'params': current.params, 'batch_stats': current.batch_stats})
      metrics = evaluate_lib.evaluate(eval_step, variables, eval_batches, parallel.mesh,
                                      attention_temperature(step))
      logging.info('step %d  val accuracy %.4f  val loss %.4f  (%d examples)%s', step,
                   metrics['accuracy'], metrics['loss'], metrics['num_examples'],
                   ''.join(f'  {name} {value:.4f}' for name, value in metrics.items()
                           if name.endswith('/accuracy')))
      _write_metrics(workdir, {'step': step, **{f'val_{k}': v for k, v in metrics.items()}})
      return metrics

    # Training loop. Checkpoints are written only after the loss and parameters are checked.
    # SIGTERM in any process stops every process after the same step.
    any_sigterm = distributed.AnyProcess(parallel.mesh)
    logging.info('Training steps %d..%d (%d per epoch), global batch %d on %d devices.',
                 start_step, num_train_steps, steps_per_epoch, config.batch_size, len(devices))
    status, train_metrics, val_metrics = 'trained', {}, {}
    pending, timed_steps, input_seconds, tick = [], 0, 0.0, time.perf_counter()
    for step in range(start_step + 1, num_train_steps + 1):
      waited = time.perf_counter()
      batch = next(batches)
      input_seconds += time.perf_counter() - waited
      device_state, metrics = parallel.train_step(device_state, batch)
      pending.append((step, parallel.unreplicate(metrics)))
      timed_steps += 1
      preempted = any_sigterm(sigterm_received())

      if step % config.log_every_steps == 0 or step == num_train_steps or preempted:
        _check_finite(pending, parallel.unreplicate(device_state))
        fetched = jax.device_get([m for _, m in pending])
        train_metrics = runs.summarize({k: np.mean([m[k] for m in fetched], axis=0)
                                        for k in fetched[0]})
        elapsed, tick = time.perf_counter() - tick, time.perf_counter()
        # Every run's images: what the machine trains per second.
        train_metrics['images_per_sec'] = (timed_steps * config.batch_size * config.num_runs
                                           / elapsed)
        # The share of the loop's time spent getting batches: 0 with data on the devices.
        train_metrics['input_wait'] = input_seconds / elapsed
        pending, timed_steps, input_seconds = [], 0, 0.0
        logging.info('step %d  %s', step, '  '.join(  # Each run's figures: metrics.jsonl.
            f'{k} {v:.4g}' for k, v in train_metrics.items() if not k.startswith('run_')))
        _write_metrics(workdir, {'step': step, **train_metrics})

      if step % config.checkpoint_every_steps == 0 or step == num_train_steps or preempted:
        current = parallel.unreplicate(device_state)
        _check_finite(pending, current)
        checkpoint.save(manager, current, config, attention_temperature=attention_temperature(step))
      if preempted:
        status = 'preempted'
        manager.wait_until_finished()
        logging.warning('SIGTERM: saved a checkpoint at step %d in %s and stopped. Run the '
                        'same command to resume.', step, manager.directory)
        break
      if eval_every and (step % eval_every == 0 or step == num_train_steps):
        val_metrics = run_eval(step)
        if val_metrics['accuracy'] > best_accuracy:
          best_accuracy = val_metrics['accuracy']
          current = parallel.unreplicate(device_state)
          _check_finite(pending, current)
          checkpoint.save_best(best_manager, current, config,
                               attention_temperature=attention_temperature(step),
                               val_accuracy=best_accuracy)
        # Keep evaluation out of the throughput figure.
        timed_steps, input_seconds, tick = 0, 0.0, time.perf_counter()
    return {'status': status, 'step': step, 'train': train_metrics, 'val': val_metrics}
