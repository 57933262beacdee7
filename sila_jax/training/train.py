"""`train_and_evaluate`: the whole run, top to bottom, over named stages.

plan (devices, data, budget) -> learner (update step, initial state) -> evaluator -> restore
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

from sila_jax import config_checks
from sila_jax import methods
from sila_jax.data import input_pipeline
from sila_jax.errors import INTERRUPTED, ConfigError, DataError, NonFiniteLossError
from sila_jax.evaluation import evaluate as evaluate_lib
from sila_jax.methods import peers
from sila_jax.models import model as model_lib
from sila_jax.training import checkpoint
from sila_jax.training import distributed
from sila_jax.training import metrics as metrics_lib
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import progress as progress_lib
from sila_jax.training import runs
from sila_jax.training import train_step as train_step_lib

RUN_DESCRIPTION = 'run.json'
PROFILE = 'profile'  # Under the workdir: config.profile_steps' trace.
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
class Learner:
  """What trains: the method, its per-run update step and its initial state."""
  method: methods.Method
  step_fn: Callable  # (state, batch, settings) -> (state, metrics): train_step.make_train_step.
  initial_state: Callable[[], Any]  # () -> state with every leaf but `step` stacked (R, ...).

  def attention_temperature(self, step: int) -> float:
    """DynamicConv's attention temperature at `step` (the method's schedule)."""
    return float(self.method.attention_temperature(step))


def plan_run(config: ml_collections.ConfigDict) -> Plan:
  """Checks `config`, reads this process's training shards and fixes the step budget."""
  # shard_map spans every device of every process; pmap this process's.
  devices = jax.devices() if config.parallel == 'shard_map' else jax.local_devices()
  config_checks.check_config(config, len(devices), jax.process_count())
  device_batch = config.batch_size // len(devices)
  train_shards, shard_size = input_pipeline.load_train_shards(config, devices)
  steps_per_epoch = shard_size // device_batch
  # A batch that runs past an epoch's end takes the next epoch's first images: a split of
  # under one batch repeats images in every batch, one of under two in many.
  size = (f'The training split {config.train_split!r} gives {shard_size * len(devices)} '
          f'examples ({shard_size} per device)')
  if shard_size < device_batch:
    raise DataError(f'{size}, fewer than one global batch of {config.batch_size}: every batch '
                    'would hold images twice. Use a larger split or a smaller batch_size.')
  if shard_size < 2 * device_batch:
    logging.warning('%s, fewer than two global batches of %d: the batches that run past the '
                    "end of an epoch hold some images twice.", size, config.batch_size)
  return Plan(
      devices=devices, shard_ids=input_pipeline.device_shards(devices),
      train_shards=train_shards, shard_size=shard_size, device_batch=device_batch,
      steps_per_epoch=steps_per_epoch,
      num_train_steps=(config.num_train_steps if config.num_train_steps > 0
                       else config.num_epochs * steps_per_epoch),
      eval_every={-1: steps_per_epoch, 0: None}.get(config.eval_every_steps,
                                                    config.eval_every_steps))


def build_learner(config: ml_collections.ConfigDict, plan: Plan) -> Learner:
  """`config`'s method for its peers (one: a single model), their optimizer and per-run
  update step."""
  schedule = optimizer_lib.learning_rate_schedule(config, plan.num_train_steps,
                                                  plan.steps_per_epoch)
  # The optimizer state's structure; each run's step builds the run's own (train_step).
  tx = optimizer_lib.create_optimizer(config, schedule)
  method = methods.create(config, bn_axis_name=parallel_lib.AXIS,
                          steps_per_epoch=plan.steps_per_epoch)
  create_state = functools.partial(train_step_lib.create_train_state, method, tx)
  image_shape = (config.image_size, config.image_size, 3)
  return Learner(
      method=method, step_fn=train_step_lib.make_train_step(method, schedule, config),
      initial_state=lambda: runs.init(lambda key: create_state(key, image_shape), config))


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


class StoppedBeforeTraining(Exception):
  """SIGTERM or Ctrl-C arrived before this start's first step: there was nothing to save."""

  def __init__(self, signum: int):
    super().__init__(STOPPED_BY[signum])
    self.signum = signum


class StopRequests:
  """SIGTERM and SIGINT (Ctrl-C) while a run starts and trains; a context manager.

  Before `training_began()` there is nothing to save, so a signal ends start-up (reading
  data, compiling) at once: with `exit_at_once` (the sila-train command) a thread woken by
  the signal prints `message(signal name)` and exits the process, even while a compilation
  holds the main thread; otherwise the main thread raises StoppedBeforeTraining at its next
  Python instruction. After it a signal is only recorded (`first`), so the loop finishes its
  step and saves; a second Ctrl-C then raises KeyboardInterrupt at once. Off the main thread
  (a notebook's worker thread, say) no signal reaches it and nothing is installed.
  """

  def __init__(self, exit_at_once: bool = False, message: Callable[[str], str] = str):
    self._exit_at_once, self._message = exit_at_once, message
    self._received: list[int] = []
    self._began = False
    self._installed = threading.current_thread() is threading.main_thread()

  def __enter__(self) -> 'StopRequests':
    if not self._installed:
      return self
    self._previous = {s: signal.signal(s, self._handle) for s in STOPPED_BY}
    if self._exit_at_once:
      # Python's own C-level handler writes the signal's number into this pipe at once.
      self._wakeup_read, wakeup_write = os.pipe()
      os.set_blocking(wakeup_write, False)
      self._previous_wakeup = signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
      self._watcher = threading.Thread(target=self._watch, daemon=True)
      self._watcher.start()
    return self

  def __exit__(self, *exc_info) -> None:
    if not self._installed:
      return
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    if self._exit_at_once:
      os.close(signal.set_wakeup_fd(self._previous_wakeup))  # The watcher reads the end.
      self._watcher.join()
      os.close(self._wakeup_read)

  def training_began(self) -> None:
    """From now on a signal is recorded, to stop after saving."""
    self._began = True

  def first(self) -> int | None:
    """The first signal received once training began, or None."""
    return self._received[0] if self._received else None

  def _handle(self, signum, frame) -> None:
    del frame
    if not self._began:
      if self._exit_at_once:
        return  # The watcher exits the process.
      raise StoppedBeforeTraining(signum)
    self._received.append(signum)
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def _watch(self) -> None:
    while byte := os.read(self._wakeup_read, 1):
      if not self._began and byte[0] in STOPPED_BY:
        print(self._message(STOPPED_BY[byte[0]]), file=sys.stderr, flush=True)
        os._exit(INTERRUPTED if byte[0] == signal.SIGINT else 0)  # pylint: disable=protected-access


class StepTrace:
  """A jax.profiler trace of training steps a+1..b, (a, b) = `steps`, written by process 0
  into `directory` (TensorBoard's profile plugin reads it, Perfetto its perfetto_trace.json.gz).

  `before(step)` ahead of each step starts it, `after(step, state)` once the step is
  dispatched ends it; `close` ends a trace the loop left early.
  """

  def __init__(self, steps: tuple[int, int] | None, directory: str):
    self._steps = steps if jax.process_index() == 0 else None
    self._directory, self._tracing = directory, False

  def before(self, step: int) -> None:
    if self._steps and step == self._steps[0] + 1:
      jax.profiler.start_trace(self._directory, create_perfetto_trace=True)
      self._tracing = True

  def after(self, step: int, state: Any) -> None:
    if self._tracing and step == self._steps[1]:
      jax.block_until_ready(state)
      self.close()
      logging.info('Wrote a profile of steps %d..%d to %s.', self._steps[0] + 1, step,
                   self._directory)

  def close(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False


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


def place_step(config: ml_collections.ConfigDict, plan: Plan, learner: Learner,
               state: Any) -> OnDevices:
  """Puts the update step of every run, `state` and the training data on the devices.

  Each run draws its batch from the device-resident shards (config.on_device) or takes the
  one the host gathered. DML peers share each augmented batch unless
  dml.independent_augment gives each a view.
  """
  num_views = peers.num_views(config)
  if config.on_device:
    input_step = input_pipeline.device_input_step(learner.step_fn, config, parallel_lib.AXIS,
                                                  plan.shard_size, plan.device_batch, num_views)
  else:
    input_step = input_pipeline.host_input_step(learner.step_fn, config, parallel_lib.AXIS,
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


def check_memory(abstract_state: Any) -> None:
  """Raises ConfigError when the train state and one gradient alone would not fit in a
  device's memory (on CPU, in the host's, which its devices share): a lower bound of what
  training needs, found from shapes before anything is built."""
  def size(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
  needed = size(abstract_state) + size(abstract_state.params)
  device = jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit')
  where = f'the memory of one {device.device_kind}'
  if limit is None:  # CPU devices: the host's memory, shared by this process's devices.
    limit = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // len(jax.local_devices())
    where = (f"this machine's memory ({limit * len(jax.local_devices()) / 1e9:.1f} GB) "
             f'shared by {len(jax.local_devices())} device(s)')
  if needed > limit:
    raise ConfigError(
        f'The train state ({model_lib.count_params(abstract_state.params):,} parameters with '
        f'their optimizer state and gradient) needs at least {needed / 1e9:.1f} GB per device, '
        f'more than {where}; lower num_runs, dml.num_peers, width or the model.')


def restore_or_initialise(checkpoints: checkpoint.Checkpoints, learner: Learner,
                          abstract_state: Any, plan: Plan) -> Any:
  """The newest readable checkpoint's state, or a fresh one if there is none. Restoring into
  the abstract state lets a bad checkpoint fail before anything is compiled."""
  state = checkpoints.restore(abstract_state)
  if state is None:
    return learner.initial_state()
  start_step = int(state.step)
  if start_step < plan.num_train_steps:
    epoch, index = plan.position(start_step)
    logging.info('Resuming at step %d: epoch %d, example %d of %d per device.', start_step,
                 epoch, index, plan.shard_size)
  return state


def validate(step: int, state: Any, diverged_steps: np.ndarray, learner: Learner,
             evaluator: evaluate_lib.Evaluator, writer: metrics_lib.Writer,
             checkpoints: checkpoint.Checkpoints) -> dict[str, float]:
  """Validates `state` after `step` (its main branch), records the metrics and makes it the
  best checkpoint if it is; returns the metrics. `diverged_steps` (R,): as _check_finite."""
  temperature = learner.attention_temperature(step)
  metrics = evaluator.evaluate({'params': state.params, 'batch_stats': state.batch_stats},
                          temperature, diverged_steps)
  writer.write(metrics_lib.VALIDATION, step, metrics)
  checkpoints.save_if_best(state, temperature, metrics['accuracy'])
  return metrics


def unvalidated(workdir: str, step: int, plan: Plan,
                evaluator: evaluate_lib.Evaluator | None) -> bool:
  """Whether `step`, where training resumes, was due a validation that metrics.jsonl lacks:
  the process stopped between the checkpoint and the validation that follows it."""
  return (evaluator is not None and step > 0
          and is_time(step, plan.eval_every, plan.num_train_steps)
          and not any(r['step'] == step
                      for r in metrics_lib.read(workdir, metrics_lib.VALIDATION)))


def stopped_early(workdir: str, stopped_by: str) -> str:
  """What a command says when SIGTERM or Ctrl-C ended start-up, before the first step."""
  return f'{workdir}: stopped by {stopped_by} before the first step; nothing was saved.'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       exit_at_once: bool = False) -> dict[str, Any]:
  """Trains the model `config` describes, checkpointing into and logging to `workdir`.

  Resumes from the newest readable checkpoint in `workdir`, exactly where it stopped.
  SIGTERM or a first Ctrl-C finishes the step, saves a checkpoint and returns. Before the
  first step there is nothing to save, and they end start-up at once (StopRequests): with
  `exit_at_once` the process exits with stopped_early's line, as sila-train does.
  Returns {'status': 'trained' | 'stopped' | 'complete', 'step', 'train', 'val', 'diverged'
  (per run: the step at which it diverged, or None)} and, when stopped, 'stopped_by':
  'SIGTERM' | 'Ctrl-C' and 'saved' (False: stopped before the first step, 'step' None).
  """
  try:
    with StopRequests(exit_at_once, functools.partial(stopped_early, workdir)) as stops:
      return _train_and_evaluate(config, workdir, stops)
  except StoppedBeforeTraining as e:
    logging.warning(stopped_early(workdir, str(e)))
    return {'status': 'stopped', 'stopped_by': str(e), 'saved': False, 'step': None,
            'train': {}, 'val': {}, 'diverged': [None] * config.num_runs}


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stops: StopRequests) -> dict[str, Any]:
  """train_and_evaluate inside its StopRequests."""
  plan = plan_run(config)
  learner = build_learner(config, plan)
  evaluator = (evaluate_lib.Evaluator(config, config.eval_split, plan.devices)
               if plan.eval_every else None)
  abstract_state = jax.eval_shape(learner.initial_state)
  check_memory(abstract_state)
  os.makedirs(workdir, exist_ok=True)
  with contextlib.closing(checkpoint.Checkpoints(workdir, config)) as checkpoints:
    state = restore_or_initialise(checkpoints, learner, abstract_state, plan)
    start_step = int(state.step)
    diverged_steps = np.asarray(state.diverged_step)
    if start_step >= plan.num_train_steps:
      if unvalidated(workdir, start_step, plan, evaluator):
        with contextlib.closing(metrics_lib.Writer(workdir, logging.info, start_step)) as writer:
          validate(start_step, state, diverged_steps, learner, evaluator, writer, checkpoints)
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
                     learner.method, {'params': state.params, 'batch_stats': state.batch_stats}),
                 config.num_runs)
    logging.info('Training steps %d..%d (%d per epoch), global batch %d on %d devices.',
                 start_step, plan.num_train_steps, plan.steps_per_epoch, config.batch_size,
                 len(plan.devices))
    on_devices = place_step(config, plan, learner, state)
    trace = StepTrace(config_checks.profiled_steps(config.profile_steps),
                      os.path.join(workdir, PROFILE))
    with progress_lib.Progress('train', plan.num_train_steps, start_step) as progress, \
         contextlib.closing(metrics_lib.Writer(workdir, progress.write, start_step)) as writer, \
         contextlib.closing(trace):
      if unvalidated(workdir, start_step, plan, evaluator):
        validate(start_step, state, diverged_steps, learner, evaluator, writer, checkpoints)
      return train_loop(config, plan, learner, on_devices, start_step, evaluator, checkpoints,
                        writer, progress, stops, trace)


def train_loop(config: ml_collections.ConfigDict, plan: Plan, learner: Learner,
               on_devices: OnDevices, start_step: int,
               evaluator: evaluate_lib.Evaluator | None, checkpoints: checkpoint.Checkpoints,
               writer: metrics_lib.Writer, progress: progress_lib.Progress,
               stops: StopRequests, trace: StepTrace) -> dict[str, Any]:
  """Trains from `start_step` to the planned last step, logging, checkpointing, evaluating
  and tracing (`trace`) on schedule; stops after saving once SIGTERM or Ctrl-C arrives in
  any process. Returns train_and_evaluate's result."""
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
    trace.before(step)
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      device_state, metrics = parallel.train_step(device_state, batch)
    stops.training_began()
    trace.after(step, device_state)
    pending.append((step, parallel.unreplicate(metrics)))
    timed_steps += 1
    progress.update()
    stopping = any_process_stops(stops.first() is not None)

    if is_time(step, config.log_every_steps, last) or stopping:
      diverged_steps = _check_finite(pending, diverged_steps)
      fetched = [metrics_lib.flatten(m) for m in jax.device_get([m for _, m in pending])]
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
      checkpoints.save(parallel.unreplicate(device_state), learner.attention_temperature(step))
    if stopping:
      checkpoints.wait()
      # Another process may have received the signal: 'SIGTERM' there.
      result = {'status': 'stopped', 'stopped_by': STOPPED_BY[stops.first() or signal.SIGTERM],
                'saved': True}
      logging.warning('%s: saved a checkpoint at step %d in %s and stopped.',
                      result['stopped_by'], step, checkpoints.directory)
      break
    if is_time(step, plan.eval_every, last):
      diverged_steps = _check_finite(pending, diverged_steps)
      val_metrics = validate(step, parallel.unreplicate(device_state), diverged_steps, learner,
                             evaluator, writer, checkpoints)
      # Keep evaluation out of the throughput figure.
      timed_steps, input_seconds, tick = 0, 0.0, time.perf_counter()
  return {**result, 'step': step, 'train': train_metrics, 'val': val_metrics,
          'diverged': runs.diverged(diverged_steps)}
