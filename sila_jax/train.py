"""`train_and_evaluate`: the whole run, top to bottom, over named stages.

plan (devices, data, budget) -> model (update step, initial state) -> evaluator -> restore
or initialise -> the step on the devices -> loop (train, log, checkpoint, evaluate). Every
mistake in the config, the data or an existing checkpoint raises a UserError before
anything is compiled.
"""
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import platform
import signal
import sys
import threading
import time
from importlib import metadata
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from sila_jax import checkpoint
from sila_jax import config_checks
from sila_jax import distributed
from sila_jax import evaluate as evaluate_lib
from sila_jax import input_pipeline
from sila_jax import metrics as metrics_lib
from sila_jax import model as model_lib
from sila_jax import optimizer as optimizer_lib
from sila_jax import parallel as parallel_lib
from sila_jax import peers
from sila_jax import progress as progress_lib
from sila_jax import runs
from sila_jax import train_step as train_step_lib
from sila_jax.errors import DataError, NonFiniteLossError

RUN_DESCRIPTION = 'run.json'
# Fields of a training record that depend on the machine's speed, not on the run.
TIMINGS = ('images_per_sec', 'input_wait')
# Distributions whose versions run.json records.
PACKAGES = ('sila_jax', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'chex', 'numpy',
            'ml_collections', 'tensorflow-datasets', 'tensorboardX', 'tqdm', 'matplotlib')
STOPPED_BY = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C'}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where and how long a run trains: its devices, its training shards and its budget."""
  devices: list[jax.Device]  # Every process's (shard_map) or this process's (pmap).
  shard_ids: list[int]  # Mesh positions of this process's devices.
  train_shards: list[input_pipeline.Examples]  # One per local device, s examples each.
  shard_size: int  # s
  device_batch: int
  steps_per_epoch: int
  num_train_steps: int
  eval_every: int | None  # Steps between validations; None: never.

  def epoch(self, step: int) -> float:
    """Epochs of the training split seen after `step` steps."""
    return step * self.device_batch / self.shard_size

  def position(self, step: int) -> tuple[int, int]:
    """(epoch, example of the device's shard) where step `step + 1` starts."""
    return divmod(step * self.device_batch, self.shard_size)


@dataclasses.dataclass(frozen=True)
class Model:
  """What trains: the per-run update step and its initial state."""
  step_fn: Callable  # (state, batch, run) -> (state, metrics): train_step.make_*train_step.
  initial_state: Callable[[], Any]  # () -> state with every leaf but `step` stacked (R, ...).
  attention_temperature: Callable[[int], float]  # step -> DynamicConv's attention temperature.


def plan_run(config: ml_collections.ConfigDict) -> Plan:
  """Checks `config`, reads this process's training shards and fixes the step budget."""
  # shard_map spans every device of every process; pmap this process's.
  devices = jax.devices() if config.parallel == 'shard_map' else jax.local_devices()
  config_checks.check_config(config, len(devices), jax.process_count())
  device_batch = config.batch_size // len(devices)
  train_shards, shard_size = input_pipeline.load_train_shards(config, devices)
  steps_per_epoch = shard_size // device_batch
  if not steps_per_epoch:
    raise DataError(f'The training split gives {shard_size * len(devices)} examples '
                    f'({shard_size} per device), fewer than one batch of {config.batch_size}.')
  return Plan(
      devices=devices, shard_ids=input_pipeline.device_shards(devices),
      train_shards=train_shards, shard_size=shard_size, device_batch=device_batch,
      steps_per_epoch=steps_per_epoch,
      num_train_steps=(config.num_train_steps if config.num_train_steps > 0
                       else config.num_epochs * steps_per_epoch),
      eval_every={-1: steps_per_epoch, 0: None}.get(config.eval_every_steps,
                                                    config.eval_every_steps))


def build_model(config: ml_collections.ConfigDict, plan: Plan) -> Model:
  """The model of `config` (or its DML peers), its optimizer and per-run update step."""
  schedule = optimizer_lib.learning_rate_schedule(config, plan.num_train_steps,
                                                  plan.steps_per_epoch)
  # The optimizer state's structure; each run's step builds the run's own (train_step).
  tx = optimizer_lib.create_optimizer(config, schedule)
  attention_schedule = (
      optimizer_lib.attention_temperature_schedule(config, plan.steps_per_epoch)
      if any(map(model_lib.is_dynamic, peers.peer_models(config))) else None)
  if peers.is_dml(config):
    groups = peers.create_groups(config, bn_axis_name=train_step_lib.AXIS)
    step_fn = train_step_lib.make_peer_train_step(groups, schedule, config,
                                                  attention_schedule)
    create_state = functools.partial(train_step_lib.create_peer_train_state, groups, tx)
  else:
    model = model_lib.create_model(config, bn_axis_name=train_step_lib.AXIS)
    step_fn = train_step_lib.make_train_step(model, schedule, config, attention_schedule)
    create_state = functools.partial(train_step_lib.create_train_state, model, tx)
  image_shape = (config.image_size, config.image_size, 3)
  return Model(
      step_fn=step_fn,
      initial_state=lambda: runs.init(lambda key: create_state(key, image_shape), config),
      attention_temperature=lambda step: (float(attention_schedule(step))
                                          if attention_schedule else 1.0))


def describe_run(config: ml_collections.ConfigDict, plan: Plan, start_step: int) -> dict:
  """What run.json records: the resolved config, package versions, devices, command line."""
  versions = {'python': platform.python_version()}
  for name in PACKAGES:
    with contextlib.suppress(metadata.PackageNotFoundError):
      versions[name] = metadata.version(name)
  return {'command': sys.argv, 'start_step': start_step,
          'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
          'devices': {'platform': plan.devices[0].platform, 'kind': plan.devices[0].device_kind,
                      'count': len(plan.devices), 'processes': jax.process_count()},
          'packages': versions, 'config': config.to_dict()}


def is_time(step: int, every: int | None, last: int) -> bool:
  """Whether an action due every `every` steps (None: never) is due after `step`; an action
  that is due at all is due after the `last` step."""
  return every is not None and (step % every == 0 or step == last)


@contextlib.contextmanager
def _stop_requests() -> Iterator[Callable[[], int | None]]:
  """Yields a function returning the first of SIGTERM or SIGINT (Ctrl-C) received, or None.

  Each handler only records the signal, so the loop finishes its step and saves; after the
  first Ctrl-C a second one raises KeyboardInterrupt at once.
  """
  received = []
  if threading.current_thread() is not threading.main_thread():
    yield lambda: None  # Signals reach the main thread only.
    return

  def record(signum, frame):
    del frame
    received.append(signum)
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  previous = {s: signal.signal(s, record) for s in STOPPED_BY}
  try:
    yield lambda: received[0] if received else None
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def _check_finite(pending: list[tuple[int, Any]], known: np.ndarray) -> np.ndarray:
  """The step at which each run has diverged (train_step; 0: it has not), (R,), after the
  pending (step, metrics); `known`: the same as checked before, returned if none is pending.

  A single run stops there: NonFiniteLossError, raised before a checkpoint could take the
  state it stopped in. Of several runs, each newly diverged one is logged; the rest carry on.
  """
  if not pending:
    return known
  diverged_steps = np.asarray(jax.device_get(pending[-1][1]['diverged_step']))
  for r in np.flatnonzero(diverged_steps != known):
    step = int(diverged_steps[r])
    loss = next(float(m['loss'][r]) for s, m in pending if s == step)
    what = (f'Loss is {loss} at step {step}' if not np.isfinite(loss)
            else f'Parameters are not finite after step {step}')
    if len(known) == 1:
      raise NonFiniteLossError(f'{what}; stopping. The last checkpoint, written before it, '
                               'is intact.')
    logging.warning('%s in run %d: it keeps its last finite state and stops updating; the '
                    'other runs carry on.', what, r)
  return diverged_steps


@dataclasses.dataclass
class OnDevices:
  """The update step of every run on the devices, with its state and its batches."""
  parallel: Any  # parallel.ShardMapParallel | PmapParallel: train_step(state, batch).
  state: Any  # The train state as the wrapper holds it.
  batches: Iterator[Any]  # What train_step takes, one per step.


def place_step(config: ml_collections.ConfigDict, plan: Plan, model: Model,
               state: Any) -> OnDevices:
  """Puts the update step of every run, `state` and the training data on the devices.

  Each run draws its batch from the device-resident shards (config.on_device) or takes the
  one the host gathered. DML peers share each augmented batch unless
  dml.independent_augment gives each a view.
  """
  num_views = (config.dml.num_peers if peers.is_dml(config) and config.dml.independent_augment
               else 1)
  if config.on_device:
    input_step = input_pipeline.device_input_step(model.step_fn, config, train_step_lib.AXIS,
                                                  plan.shard_size, plan.device_batch, num_views)
  else:
    input_step = input_pipeline.host_input_step(model.step_fn, config, train_step_lib.AXIS,
                                                num_views)
  every_run = runs.vmap_step(input_step, config, batch_axis=None if config.on_device else 1)
  parallel = parallel_lib.create_parallel(config.parallel, every_run, plan.devices)
  if config.on_device:
    resident = parallel.put_batch(
        {'image': np.concatenate([s.images for s in plan.train_shards]),
         'label': np.concatenate([s.labels for s in plan.train_shards])})
    batches = itertools.repeat(resident)
  else:
    batches = map(parallel.put_batch, input_pipeline.host_batches(
        plan.train_shards, plan.shard_ids, runs.settings(config)['seed'], plan.device_batch,
        int(state.step)))
  return OnDevices(parallel, parallel.put_state(state), batches)


def restore_or_initialise(checkpoints: checkpoint.Checkpoints, model: Model,
                          plan: Plan) -> Any:
  """The newest readable checkpoint's state, or a fresh one if there is none. Restoring into
  the abstract state lets a bad checkpoint fail before anything is compiled."""
  state = checkpoints.restore(jax.eval_shape(model.initial_state))
  if state is None:
    return model.initial_state()
  start_step = int(state.step)
  if start_step < plan.num_train_steps:
    epoch, index = plan.position(start_step)
    logging.info('Resuming at step %d: epoch %d, example %d of %d per device.', start_step,
                 epoch, index, plan.shard_size)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the model `config` describes, checkpointing into and logging to `workdir`.

  Resumes from the newest readable checkpoint in `workdir`, exactly where it stopped.
  SIGTERM or a first Ctrl-C finishes the step, saves a checkpoint and returns.
  Returns {'status': 'trained' | 'stopped' | 'complete', 'step', 'train', 'val', 'diverged'
  (per run: the step at which it diverged, or None)} and, when stopped, 'stopped_by':
  'SIGTERM' | 'Ctrl-C'.
  """
  plan = plan_run(config)
  model = build_model(config, plan)
  evaluator = (evaluate_lib.Evaluator(config, config.eval_split, plan.devices)
               if plan.eval_every else None)
  os.makedirs(workdir, exist_ok=True)
  # Signals are only recorded until the checkpoints being written are closed.
  with _stop_requests() as stop_request, \
       contextlib.closing(checkpoint.Checkpoints(workdir, config)) as checkpoints:
    state = restore_or_initialise(checkpoints, model, plan)
    start_step = int(state.step)
    if start_step >= plan.num_train_steps:
      logging.info('The run in %s is already complete (step %d of %d); nothing to do.',
                   workdir, start_step, plan.num_train_steps)
      return {'status': 'complete', 'step': start_step,
              'train': metrics_lib.last(workdir, metrics_lib.TRAIN),
              'val': metrics_lib.last(workdir, metrics_lib.VALIDATION),
              'diverged': runs.diverged(state.diverged_step)}
    if jax.process_index() == 0:
      metrics_lib.write_atomically(os.path.join(workdir, RUN_DESCRIPTION),
                                   json.dumps(describe_run(config, plan, start_step), indent=2))
    logging.info('Parameters per run: %d in training, %d at test time; %d run(s).',
                 model_lib.count_params(runs.take(state.params, 0)),
                 evaluate_lib.deployable_params(
                     config, {'params': state.params, 'batch_stats': state.batch_stats}),
                 config.num_runs)
    logging.info('Training steps %d..%d (%d per epoch), global batch %d on %d devices.',
                 start_step, plan.num_train_steps, plan.steps_per_epoch, config.batch_size,
                 len(plan.devices))
    on_devices = place_step(config, plan, model, state)
    with progress_lib.Progress('train', plan.num_train_steps, start_step) as progress, \
         contextlib.closing(metrics_lib.Writer(workdir, progress.write, start_step)) as writer:
      return train_loop(config, plan, model, on_devices, start_step, evaluator, checkpoints,
                        writer, progress, stop_request)


def train_loop(config: ml_collections.ConfigDict, plan: Plan, model: Model,
               on_devices: OnDevices, start_step: int,
               evaluator: evaluate_lib.Evaluator | None, checkpoints: checkpoint.Checkpoints,
               writer: metrics_lib.Writer, progress: progress_lib.Progress,
               stop_request: Callable[[], int | None]) -> dict[str, Any]:
  """Trains from `start_step` to the planned last step, logging, checkpointing and
  evaluating on schedule; stops after saving once SIGTERM or Ctrl-C arrives in any process.
  Returns train_and_evaluate's result."""
  parallel, device_state, batches = on_devices.parallel, on_devices.state, on_devices.batches
  last = plan.num_train_steps
  any_process_stops = distributed.AnyProcess(parallel.mesh)
  result = {'status': 'trained'}
  train_metrics, val_metrics = {}, {}
  pending, timed_steps, input_seconds, tick = [], 0, 0.0, time.perf_counter()
  diverged_steps = np.asarray(jax.device_get(parallel.unreplicate(device_state).diverged_step))
  for step in range(start_step + 1, last + 1):
    waited = time.perf_counter()
    batch = next(batches)
    input_seconds += time.perf_counter() - waited
    device_state, metrics = parallel.train_step(device_state, batch)
    pending.append((step, parallel.unreplicate(metrics)))
    timed_steps += 1
    progress.update()
    stopping = any_process_stops(stop_request() is not None)

    if is_time(step, config.log_every_steps, last) or stopping:
      diverged_steps = _check_finite(pending, diverged_steps)
      fetched = jax.device_get([m for _, m in pending])
      train_metrics = runs.summarize({k: np.mean([m[k] for m in fetched], axis=0)
                                      for k in fetched[0] if k != 'diverged_step'},
                                     diverged_steps)
      elapsed, tick = time.perf_counter() - tick, time.perf_counter()
      # Every run's images: what the machine trains per second.
      train_metrics['images_per_sec'] = (timed_steps * config.batch_size * config.num_runs
                                         / elapsed)
      # The share of the loop's time spent getting batches: 0 with data on the devices.
      train_metrics['input_wait'] = input_seconds / elapsed
      pending, timed_steps, input_seconds = [], 0, 0.0
      progress.set(epoch=round(plan.epoch(step), 2),
                   img_s=round(train_metrics['images_per_sec']),
                   loss=train_metrics['loss'], lr=train_metrics['learning_rate'])
      writer.write(metrics_lib.TRAIN, step, train_metrics)

    # Checkpoints are written only after the loss and parameters are checked.
    if is_time(step, config.checkpoint_every_steps, last) or stopping:
      diverged_steps = _check_finite(pending, diverged_steps)
      checkpoints.save(parallel.unreplicate(device_state), model.attention_temperature(step))
    if stopping:
      checkpoints.wait()
      # Another process may have received the signal: 'SIGTERM' there.
      result = {'status': 'stopped', 'stopped_by': STOPPED_BY[stop_request() or signal.SIGTERM]}
      logging.warning('%s: saved a checkpoint at step %d in %s and stopped.',
                      result['stopped_by'], step, checkpoints.directory)
      break
    if is_time(step, plan.eval_every, last):
      current = parallel.unreplicate(device_state)
      diverged_steps = _check_finite(pending, diverged_steps)
      val_metrics = evaluator.run({'params': current.params, 'batch_stats': current.batch_stats},
                                  model.attention_temperature(step), diverged_steps)
      writer.write(metrics_lib.VALIDATION, step, val_metrics)
      checkpoints.save_if_best(current, model.attention_temperature(step),
                               val_metrics['accuracy'])
      # Keep evaluation out of the throughput figure.
      timed_steps, input_seconds, tick = 0, 0.0, time.perf_counter()
  return {**result, 'step': step, 'train': train_metrics, 'val': val_metrics,
          'diverged': runs.diverged(diverged_steps)}
