"""What several test files share: the checkout's root, small image folders, the tiny config,
train.py launched as a real process, the per-device step driven by hand, and readers of what a
run leaves in its workdir. Test files import from here, never from one another."""
import functools
import os
import subprocess
import sys
import types

import chex
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from sila_jax import methods
from sila_jax.configs import default
from sila_jax.models import model as model_lib
from sila_jax.training import metrics
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import runs
from sila_jax.training import train_step as train_step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AXIS = parallel_lib.AXIS  # The mesh axis the step and the tests' own shard_maps name.
CLASSES = ('cat', 'dog', 'ship')


# Data and configs.

def make_folder(root, per_class=10, size=32, classes=CLASSES):
  """root/train/<class>/<i>.jpg with random images; returns root."""
  rng = np.random.default_rng(0)
  for name in classes:
    os.makedirs(os.path.join(root, 'train', name))
    for i in range(per_class):
      pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, 'train', name, f'{i:04d}.jpg'))
  return str(root)


def make_tiny_config(data_dir):
  """ResNet-8 (one block a stage) at a quarter width, 16-image batches, 3 steps on the folder
  `data_dir` (the 40 images of conftest's ten_class_folder): the real code, quick to compile
  (its train step compiles in 3.7 s here, ResNet-20's in 9.9). Training and validation both
  read the whole split."""
  config = default.get_config()
  config.update(dataset='folder', data_dir=data_dir, train_split='train', eval_split='train')
  config.model = 'resnet8'
  config.width = 0.25
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.optimizer.warmup_epochs = 0.0
  return config


def plain_param_count(config):
  """Parameters of `config`'s model without Siamese heads: what export keeps."""
  plain = config.copy_and_resolve_references()
  plain.sila.enabled = False
  variables = model_lib.abstract_variables(model_lib.create_model(plain), plain.image_size)
  return model_lib.count_params(variables['params'])


# Processes the tests start.

def xla_flags(num_devices=None):
  """XLA_FLAGS for a process the tests start: this one's (conftest.py's quick compilation
  among them) with `num_devices` fake CPU devices, or with JAX's one CPU device for None."""
  flags = [flag for flag in os.environ.get('XLA_FLAGS', '').split()
           if not flag.startswith('--xla_force_host_platform_device_count=')]
  if num_devices:
    flags.append(f'--xla_force_host_platform_device_count={num_devices}')
  return ' '.join(flags)


# train.py and eval.py on 2 fake CPU devices, logging every compilation.
PROCESS_ENV = {**os.environ, 'XLA_FLAGS': xla_flags(2), 'JAX_LOG_COMPILES': '1'}


def cli_overrides(data_dir, **fields):
  """Flags for a ResNet-8/4 on the 3-class folder data of conftest's data_dir: 48 training,
  12 validation images."""
  fields = {'data_dir': data_dir, 'num_classes': 3, 'train_split': 'train[:-4]',
            'eval_split': 'train[-4:]', 'model': 'resnet8', 'width': 0.25, 'batch_size': 8,
            'eval_batch_size': 8, 'log_every_steps': 1, **fields}
  return [f'--config.{k}={v}' for k, v in fields.items()]


def launch(script, workdir, overrides, log_path):
  """Starts `script` in the background; its stderr (the absl log) goes to `log_path`."""
  with open(log_path, 'w') as log:
    return subprocess.Popen(
        [sys.executable, script, '--config=configs/cifar10_folder.py', f'--workdir={workdir}',
         *overrides], cwd=ROOT, env=PROCESS_ENV, stdout=subprocess.PIPE, stderr=log, text=True)


# What a run leaves in its workdir.

def logged_steps(workdir):
  """Steps of the training records in metrics.jsonl so far (read while a running process
  appends to it: metrics.read leaves out a last line cut off)."""
  return [r['step'] for r in metrics.read(workdir, metrics.TRAIN)]


def saved_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def saved_state(workdir, step):
  """Every array of the checkpointed TrainState, flattened: {'params/0/backbone/...': array}
  (peer group 0)."""
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))
  return flax.traverse_util.flatten_dict(tree, sep='/')


def largest_file(directory):
  files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def tensorboard_scalars(workdir):
  """{tag: [(step, value), ...]} as TensorBoard itself reads <workdir>'s event files."""
  # TensorBoard's own marker for "use the TensorFlow stub": the reader without TensorFlow.
  sys.modules.setdefault('tensorboard.compat.notf', types.ModuleType('tensorboard.compat.notf'))
  from tensorboard.backend.event_processing import event_accumulator
  accumulator = event_accumulator.EventAccumulator(workdir, size_guidance={'scalars': 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()['scalars']}


def jsonl_scalars(workdir):
  """The same {tag: [(step, value), ...]} from metrics.jsonl."""
  scalars = {}
  for record in metrics.read(workdir):
    for name, value in record.items():
      if name not in ('type', 'step'):
        scalars.setdefault(f"{record['type']}/{name}", []).append((record['step'], value))
  return scalars


def assert_same_scalars(workdir):
  """TensorBoard's events hold exactly metrics.jsonl's values (to float32)."""
  events, records = tensorboard_scalars(workdir), jsonl_scalars(workdir)
  assert sorted(events) == sorted(records)
  for tag, points in records.items():
    assert [step for step, _ in events[tag]] == [step for step, _ in points], tag
    assert [value for _, value in events[tag]] == pytest.approx(
        [value for _, value in points], rel=1e-6), tag


# The per-device step, driven by hand as train_and_evaluate drives it.

def setup(config, steps_per_epoch=None):
  """(method, tx, schedule, initial state of every run) for `config`, as train_and_evaluate
  builds them; `steps_per_epoch` anneals dynamic convolutions' attention temperature."""
  method = methods.create(config, bn_axis_name=AXIS, steps_per_epoch=steps_per_epoch)
  schedule = optimizer_lib.learning_rate_schedule(config, 10, 5)
  tx = optimizer_lib.create_optimizer(config, schedule)
  state = runs.init(lambda key: train_step_lib.create_train_state(method, tx, key, (32, 32, 3)),
                    config)
  return method, tx, schedule, state


def one_run(step_fn, config):
  """step_fn for a single run's (unstacked) state, with run 0's settings of `config`."""
  return functools.partial(step_fn, settings=runs.take(runs.settings(config), 0))


def every_run(step_fn, config):
  """step_fn for every run of `config`, all reading the same batch."""
  return runs.vmap_step(step_fn, config, batch_axis=None)


def batches(num, size=16, seed=0):
  """`num` batches of `size` random 32x32 images with labels of 10 classes."""
  rng = np.random.default_rng(seed)
  return [{'image': rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 10, size).astype(np.int32)} for _ in range(num)]


def run(parallel, state, data):
  """Applies the wrapped step to each batch; returns the final state and the metrics."""
  device_state, history = parallel.put_state(state), []
  for batch in data:
    device_state, step_metrics = parallel.train_step(device_state, parallel.put_batch(batch))
    history.append(parallel.unreplicate(step_metrics))
  return jax.device_get(parallel.unreplicate(device_state)), jax.device_get(history)


def assert_eight_devices_match_one(step_fn, state, data):
  """Runs the step of every run on 1 and on 8 devices (shard_map) over `data`, asserts they
  agree to the bound of the 1 vs 8 device tests, and returns the one device's (state,
  metrics)."""
  one_state, one_metrics = run(parallel_lib.ShardMapParallel(step_fn, jax.devices()[:1]),
                               state, data)
  eight_state, eight_metrics = run(parallel_lib.ShardMapParallel(step_fn, jax.devices()[:8]),
                                   state, data)
  chex.assert_trees_all_close(eight_state, one_state, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(eight_metrics, one_metrics, rtol=1e-4, atol=1e-5)
  return one_state, one_metrics


# Experiment results, made up.

def record(arm, seed, accuracy, diverged_step=None):
  """A finished run's result as running.train_group saves it, with made-up numbers."""
  return {'arm': arm, 'seed': seed, 'step': 10, 'diverged_step': diverged_step,
          'val_accuracy': accuracy, 'val_loss': 1.0, 'train_loss_main': 2.0,
          'history': {'train_loss_main': [[5, 2.5], [10, 2.0]],
                      'val_accuracy': [[10, accuracy]]}}


def records_of(deltas_by_arm, base=(0.5, 0.6, 0.7, 0.4, 0.3)):
  """Records of arm 'plain' at accuracies `base` and of each other arm at base + its deltas,
  seed by seed."""
  made = [record('plain', s, a) for s, a in enumerate(base)]
  for arm, deltas in deltas_by_arm.items():
    made += [record(arm, s, a + d) for s, (a, d) in enumerate(zip(base, deltas))]
  return made


def grid_of(arms, seeds):
  """A grid of `arms` (no settings) over `seeds`, with plain as the baseline."""
  return {'arms': dict.fromkeys(arms, {}), 'seeds': seeds, 'baselines': ('plain',)}
