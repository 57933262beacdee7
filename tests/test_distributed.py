"""Several processes on JAX's distributed runtime, tested with real processes on this machine.

Two train.py / eval.py processes with 2 fake CPU devices each join through a loopback
coordinator (JAX_COORDINATOR_ADDRESS) and exchange data through gloo; they are compared with one
process with 4 devices, with themselves after SIGTERM and a resume, and read a corrupt
checkpoint; ONE, CL-ILR and BYOT (the latter two with two runs) train and evaluate in two
processes as in one. Every launch is bounded in time and its process group killed on the way
out.
"""
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sila_jax import config_checks
from sila_jax.data import input_pipeline
from sila_jax.errors import ConfigError
from sila_jax.training import distributed
from sila_jax.training import metrics
from sila_jax.training import train
from tests.helpers import (ROOT, largest_file, logged_steps, make_folder, saved_state, saved_steps,
                           xla_flags)

# Seconds for one launch: a hung collective fails the test, not the suite. Five processes start
# side by side; on a loaded 2-core CI machine the preempted run took over 240 s to log step 2.
TIMEOUT = 600
# Each test starts several training processes; two such tests side by side put 8 on 2 cores,
# and once then one of two processes was still finishing a checkpoint when the other's
# shutdown barrier timed out. They share one xdist worker, so they run one after another.
STARTS_PROCESSES = pytest.mark.xdist_group('test_distributed.processes')
STEPS = 12  # 4 epochs of 3 steps: 51 training images in 4 shards of 12, 4 per device and step.


def overrides(data_dir, **changes):
  """ResNet-8/4, global batch 16; the 9 validation images split 5 / 4 over two processes, so
  with 4 per process and batch one process evaluates 2 batches and the other 1 (+ 1 empty).
  `changes` replace or add config fields."""
  fields = {'data_dir': data_dir, 'num_classes': 3, 'train_split': 'train[:-3]',
            'eval_split': 'train[-3:]', 'model': 'resnet8', 'width': 0.25, 'batch_size': 16,
            'eval_batch_size': 8,
            'log_every_steps': 1, 'num_train_steps': STEPS, 'checkpoint_every_steps': 4,
            'eval_every_steps': 6, 'keep_checkpoints': 3, **changes}
  return [f'--config.{k}={v}' for k, v in fields.items()]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def environment(num_devices: int, process: tuple[int, int, int] | None = None) -> dict[str, str]:
  """The test's environment without launcher variables, with `num_devices` CPU devices and,
  for process=(index, count, port), the coordinator variables of one process of a run."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'))}
  # XLA:CPU gives a process max(NPROC or cores, its devices) intra-op threads, and Eigen splits
  # a convolution's sums by thread count: the same NPROC gives every device the same arithmetic
  # whether a process holds 2 devices or 4.
  env.update(XLA_FLAGS=xla_flags(num_devices),
             JAX_PLATFORMS='cpu', NPROC='4')
  if process:
    index, count, port = process
    env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(count),
               JAX_PROCESS_ID=str(index))
  return env


@contextlib.contextmanager
def launched(script, workdir, flags, log_prefix, *, num_processes=2, devices_per_process=2):
  """Starts the processes of one run of `script`; yields them; kills any left on the way out.

  With num_processes=1 the process runs alone, without the distributed runtime.
  """
  port = free_port()
  started = []
  try:
    for i in range(num_processes):
      env = environment(devices_per_process, (i, num_processes, port) if num_processes > 1
                        else None)
      with open(f'{log_prefix}.{i}.log', 'w') as log:
        started.append(subprocess.Popen(
            [sys.executable, script, '--config=configs/cifar10_folder.py',
             f'--workdir={workdir}', *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=log, text=True, start_new_session=True))
    yield started
  finally:
    for process in started:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
      process.communicate()


def finish(processes, log_prefix) -> list[str]:
  """Each process's stdout, once all have exited 0 (else the failing one's log tail)."""
  outputs = []
  for i, process in enumerate(processes):
    stdout, _ = process.communicate(timeout=TIMEOUT)
    log = open(f'{log_prefix}.{i}.log').read()
    assert process.returncode == 0, f'process {i}:\n{log[-3000:]}'
    outputs.append(stdout)
  return outputs


def records(workdir, kind=None):
  """metrics.jsonl's records (of type `kind` if given) without the machine's timings."""
  return [{k: v for k, v in r.items() if k not in train.TIMINGS}
          for r in metrics.read(workdir, kind)]


def assert_same_state(got, expected, **tolerance):
  assert got.keys() == expected.keys()
  for path in expected:  # Parameters, BatchNorm statistics, optimizer state, step, RNG.
    if tolerance:
      np.testing.assert_allclose(got[path], expected[path], err_msg=path, **tolerance)
    else:
      np.testing.assert_array_equal(got[path], expected[path], err_msg=path)


@pytest.mark.slow
@STARTS_PROCESSES
def test_two_processes_train_evaluate_stop_and_resume_as_one_run(data_dir, tmp_path):
  flags = overrides(data_dir)
  two, one, resumed = (str(tmp_path / name) for name in ('two', 'one', 'resumed'))
  # Side by side (the runs are independent): two processes with 2 devices each; one process
  # with 4 devices; two processes again, where process 1 alone receives SIGTERM.
  with contextlib.ExitStack() as stack:
    two_processes = stack.enter_context(launched('train.py', two, flags, tmp_path / 'two'))
    one_process = stack.enter_context(launched('train.py', one, flags, tmp_path / 'one',
                                               num_processes=1, devices_per_process=4))
    preempted = stack.enter_context(launched('train.py', resumed, flags, tmp_path / 'preempted'))
    deadline = time.time() + TIMEOUT
    while max(logged_steps(resumed), default=0) < 2:
      assert all(p.poll() is None for p in preempted), open(tmp_path / 'preempted.0.log').read()
      assert time.time() < deadline
      time.sleep(0.01)
    preempted[1].send_signal(signal.SIGTERM)
    stopped_outputs = finish(preempted, tmp_path / 'preempted')
    finish(two_processes, tmp_path / 'two')
    finish(one_process, tmp_path / 'one')

  # Process 0 alone logs and writes metrics (each step once); validation sees all 9 images.
  assert '2 processes, 4 devices, 2 in this process' in open(tmp_path / 'two.0.log').read()
  logs = [open(tmp_path / f'two.{i}.log').read() for i in (0, 1)]
  assert [log.count('| train  ') for log in logs] == [STEPS, 0]
  assert [log.count('| validation  ') for log in logs] == [2, 0]
  assert logged_steps(two) == list(range(1, STEPS + 1))
  two_records = records(two)
  validations = records(two, metrics.VALIDATION)
  assert [(r['step'], r['num_examples']) for r in validations] == [(6, 9), (12, 9)]

  # One process with 4 devices sees the same global batches (device d reads shard d) and
  # ends with exactly the same state, training metrics included. Validation sums its losses
  # with XLA's all-reduce, whose order is the runtime's: the same up to rounding.
  assert_same_state(saved_state(two, STEPS), saved_state(one, STEPS))
  assert records(two, metrics.TRAIN) == records(one, metrics.TRAIN)
  one_validations = records(one, metrics.VALIDATION)
  assert ([(r['step'], r['accuracy']) for r in validations]
          == [(r['step'], r['accuracy']) for r in one_validations])
  np.testing.assert_allclose([r['loss'] for r in validations],
                             [r['loss'] for r in one_validations], rtol=1e-6)

  # SIGTERM reached process 1 only; both saved the same step and exited 0.
  stopped = saved_steps(resumed)[-1]
  assert stopped < STEPS and logged_steps(resumed)[-1] == stopped
  for output in stopped_outputs:
    assert f'stopped by SIGTERM after saving step {stopped}; run the same command' in output

  # Side by side: evaluation in two processes; and the resume of the preempted run, whose
  # newest checkpoint went bad (process 0 alone sets it aside, both resume from the one
  # before).
  data_file = largest_file(os.path.join(resumed, 'checkpoints', str(stopped), 'state'))
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 2)
  previous = max([s for s in saved_steps(resumed) if s < stopped], default=0)
  with contextlib.ExitStack() as stack:
    evaluation = stack.enter_context(launched('eval.py', two, flags, tmp_path / 'eval'))
    resume = stack.enter_context(launched('train.py', resumed, flags, tmp_path / 'resume'))
    finish(evaluation, tmp_path / 'eval')
    finish(resume, tmp_path / 'resume')

  with open(os.path.join(two, 'eval_train_-3.json')) as f:
    result = json.load(f)
  assert (result['step'], result['num_examples']) == (STEPS, 9)
  assert result['accuracy'] == validations[-1]['accuracy']
  np.testing.assert_allclose(result['loss'], validations[-1]['loss'], rtol=1e-6)

  log = open(tmp_path / 'resume.0.log').read()
  assert f'Checkpoint at step {stopped} is corrupt' in log
  assert 'is corrupt' not in open(tmp_path / 'resume.1.log').read()
  if previous:
    assert f'Resuming at step {previous}:' in log
  assert os.listdir(os.path.join(resumed, 'corrupt_checkpoints')) == [f'checkpoints_{stopped}']
  assert_same_state(saved_state(resumed, STEPS), saved_state(two, STEPS))
  assert records(resumed) == two_records


NEIGHBOUR_STEPS = 4


@pytest.mark.slow
@STARTS_PROCESSES
@pytest.mark.parametrize('name, changes', [
    ('one', {}),
    ('clilr', {'num_runs': 2, 'runs.clilr_beta': '(0.5,0.8)'}),
    ('byot', {'num_runs': 2, 'runs.byot_alpha': '(0.1,0.3)'}),
])
def test_two_processes_train_and_evaluate_each_neighbour_as_one_process(data_dir, tmp_path, name,
                                                                         changes):
  flags = overrides(data_dir, method=name, num_train_steps=NEIGHBOUR_STEPS,
                    eval_every_steps=NEIGHBOUR_STEPS, **changes)
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  with contextlib.ExitStack() as stack:  # Side by side: the runs are independent.
    two_processes = stack.enter_context(launched('train.py', two, flags, tmp_path / 'two'))
    one_process = stack.enter_context(launched('train.py', one, flags, tmp_path / 'one',
                                               num_processes=1, devices_per_process=4))
    finish(two_processes, tmp_path / 'two')
    finish(one_process, tmp_path / 'one')
  # The same state and training metrics as one process with 4 devices, bit for bit; validation
  # (every branch and their ensemble for ONE and CL-ILR) up to the all-reduce's rounding.
  assert_same_state(saved_state(two, NEIGHBOUR_STEPS), saved_state(one, NEIGHBOUR_STEPS))
  assert records(two, metrics.TRAIN) == records(one, metrics.TRAIN)
  validation, = records(two, metrics.VALIDATION)
  one_validation, = records(one, metrics.VALIDATION)
  assert validation.keys() == one_validation.keys()
  assert validation['num_examples'] == 9
  branches = [k for k in validation if metrics.parse(k).of_branch]
  assert bool(branches) == (name != 'byot')
  for key, value in one_validation.items():
    if key.endswith('accuracy') or not isinstance(value, float):
      assert validation[key] == value, key
    elif key.endswith('_std'):  # Over runs: a difference of losses (about 1 to 5) rounded to
      # 1e-6, so bounded absolutely; here they differed by 8.4e-8.
      assert validation[key] == pytest.approx(value, abs=1e-5), key
    else:
      assert validation[key] == pytest.approx(value, rel=1e-6), key

  # eval.py in two processes reads the checkpoint as the run's validation did.
  with launched('eval.py', two, flags, tmp_path / 'eval') as evaluation:
    finish(evaluation, tmp_path / 'eval')
  with open(os.path.join(two, 'eval_train_-3.json')) as f:
    result = json.load(f)
  for key in ['accuracy', *[k for k in branches if k.endswith('accuracy')]]:
    assert result[key] == validation[key], key


def test_distributed_on_without_other_processes_is_a_one_line_error(data_dir, tmp_path):
  process = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/cifar10_folder.py',
       f'--workdir={tmp_path}', *overrides(data_dir), '--config.distributed=on'],
      cwd=ROOT, env=environment(2), capture_output=True, text=True, timeout=TIMEOUT)
  assert process.returncode == 1
  last_line = process.stderr.strip().splitlines()[-1]
  assert last_line.startswith("train.py: error: distributed='on': JAX could not find the other "
                              'processes'), process.stderr[-3000:]
  assert 'Traceback' not in process.stderr


@pytest.mark.parametrize('variables, expected', [
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, 'JAX_COORDINATOR_ADDRESS'),
    ({'SLURM_NTASKS': '8', 'SLURM_STEP_NODELIST': 'node[1-2]'}, 'SLURM'),
    ({'SLURM_NTASKS': '1', 'SLURM_STEP_NODELIST': 'node1'}, None),  # One task: one process.
    ({'SLURM_NTASKS': '8'}, None),  # The batch script, not an srun step.
    ({}, None),
])
def test_launchers_are_recognised_from_the_environment(variables, expected, monkeypatch):
  for name in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'SLURM_STEP_NODELIST'):
    monkeypatch.delenv(name, raising=False)
  for name, value in variables.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(distributed.importlib.util, 'find_spec', lambda name: None)  # No libtpu.
  assert distributed.launcher() == expected


def test_initialize_checks_its_mode_and_does_nothing_for_one_process(monkeypatch):
  with pytest.raises(ConfigError, match="Unknown distributed 'yes'; choose one of auto, on, off"):
    distributed.initialize('yes')
  monkeypatch.setattr(distributed, 'launcher', lambda: None)
  distributed.initialize('auto')
  distributed.initialize('off')
  assert distributed.max_over_processes(3) == 3 and distributed.all_processes(True)


def test_pmap_is_refused_with_several_processes(tiny_config):
  tiny_config.parallel = 'pmap'
  config_checks.check_config(tiny_config, 8)
  with pytest.raises(ConfigError, match="parallel='pmap' runs in one process, not 2"):
    config_checks.check_config(tiny_config, 8, num_processes=2)


@dataclasses.dataclass
class FakeDevice:
  process_index: int


def test_global_batch_does_not_depend_on_how_devices_are_spread(tiny_config, tmp_path):
  tiny_config.update(dataset='folder', data_dir=make_folder(tmp_path, per_class=8),
                     num_classes=3)
  shards, size = input_pipeline.load_train_shards(tiny_config, jax.devices()[:4])
  assert size == 6  # 24 images, 4 even shards.
  seeds = [tiny_config.seed, tiny_config.seed + 5]  # Two runs.
  one_process = input_pipeline.host_batches(shards, [0, 1, 2, 3], seeds, 2)
  halves = [input_pipeline.host_batches(shards[i:i + 2], [i, i + 1], seeds, 2) for i in (0, 2)]
  for _ in range(5):  # Across an epoch boundary.
    batch, first, second = next(one_process), next(halves[0]), next(halves[1])
    for key in batch:
      np.testing.assert_array_equal(batch[key], np.concatenate([first[key], second[key]]))
  devices = [FakeDevice(0), FakeDevice(0), FakeDevice(1), FakeDevice(1)]
  assert input_pipeline.device_shards(devices) == [0, 1]  # This is process 0.


def test_evaluation_pads_to_the_largest_shards_batch_count(tiny_config, tmp_path, monkeypatch):
  tiny_config.update(dataset='folder', data_dir=make_folder(tmp_path, per_class=3),
                     num_classes=3)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)  # Process 1 of 2: 4 of the 9 images.
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(distributed, 'max_over_processes', lambda n: max(n, 5))
  batches = input_pipeline.load_eval_shard(tiny_config, 'train', 4)
  assert batches['mask'].sum(axis=1).tolist() == [4, 0]
  assert not batches['image'][1].any() and batches['image'].shape == (2, 4, 32, 32, 3)
