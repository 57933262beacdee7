"""Start-up: sizes a machine cannot hold, a split smaller than one batch, a log free of the
libraries' chatter, and SIGTERM or Ctrl-C before the first step, which stop at once."""
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from sila_jax import config_checks
from sila_jax.commands import cli
from sila_jax.errors import ConfigError
from sila_jax.experiments import running
from sila_jax.models import heads
from sila_jax.training import runs
from sila_jax.training import train
from sila_jax.training import train_step as train_step_lib
from tests.helpers import ROOT, cli_overrides, launch, saved_steps

QUIET_ENV = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}


def _sila_train(workdir, overrides, *flags):
  """train.py run to its end, without JAX_LOG_COMPILES: (exit status, stderr lines)."""
  process = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/cifar10_folder.py', f'--workdir={workdir}',
       *overrides, *flags], cwd=ROOT, env=QUIET_ENV, capture_output=True, text=True,
      timeout=300)
  return process.returncode, [line for line in process.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize('override, message', [
    ({'sila.num_heads': heads.MAX_SIAMESE_HEADS + 1},
     f'sila.num_heads must be in 1..{heads.MAX_SIAMESE_HEADS} (each head is a module'),
    ({'num_runs': runs.MAX_MODELS + 1},
     f'num_runs x dml.num_peers is {runs.MAX_MODELS + 1}, more than {runs.MAX_MODELS}'),
    ({'num_runs': 10**6}, f'num_runs x dml.num_peers is 1000000, more than {runs.MAX_MODELS}'),
    ({'num_runs': 64, 'dml.num_peers': 8}, 'num_runs x dml.num_peers is 512'),
])
def test_sizes_that_only_build_slowly_are_refused_by_the_config_check(tiny_config, override,
                                                                      message):
  tiny_config.update_from_flattened_dict(override)
  start = time.perf_counter()
  with pytest.raises(ConfigError, match=f'^{message}'.replace('(', r'\(')):
    config_checks.check_config(tiny_config, num_devices=8)
  assert time.perf_counter() - start < 10  # A million runs are not checked one by one.


def test_the_largest_sizes_allowed_pass_the_config_check(tiny_config):
  tiny_config.update_from_flattened_dict({'sila.num_heads': heads.MAX_SIAMESE_HEADS,
                                          'num_runs': runs.MAX_MODELS})
  config_checks.check_config(tiny_config, num_devices=8)


def test_per_run_values_are_checked_in_every_distinct_run(tiny_config):
  tiny_config.num_runs = 200
  tiny_config.runs.sila_weight = (1.0,) * 199 + (-1.0,)
  with pytest.raises(ConfigError, match=r'sila.weight must not be negative, got -1.0 in '):
    config_checks.check_config(tiny_config, num_devices=8)
  tiny_config.runs.sila_weight = ()
  tiny_config.seed = 2**31 - 200  # Run 199's seed, seed + 199, is the last int32.
  config_checks.check_config(tiny_config, num_devices=8)
  tiny_config.seed += 1
  with pytest.raises(ConfigError, match='^seed must fit in int32'):
    config_checks.check_config(tiny_config, num_devices=8)


def test_a_train_state_larger_than_the_memory_is_refused_from_its_shapes():
  leaf = jax.ShapeDtypeStruct((10**6, 10**6), jnp.float32)  # 4 TB.
  state = train_step_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params={'w': leaf},
                                    batch_stats={}, opt_state=(leaf,),
                                    rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
                                    diverged_step=jax.ShapeDtypeStruct((), jnp.int32))
  with pytest.raises(ConfigError, match=r'^The train state \(1,000,000,000,000 parameters .*'
                                        r'needs at least 12000.0 GB per device, more than'):
    train.check_memory(state)
  small = jax.ShapeDtypeStruct((10, 10), jnp.float32)
  train.check_memory(state.replace(params={'w': small}, opt_state=(small,)))


def test_a_width_beyond_the_memory_stops_before_anything_is_built(tiny_config, tmp_path):
  tiny_config.width = 300.0  # ResNet-20 x 300: 2.4e10 parameters, 290 GB of state per device.
  start = time.perf_counter()
  with pytest.raises(ConfigError, match='^The train state'):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert time.perf_counter() - start < 60
  assert not os.listdir(tmp_path)  # Nothing written.


@pytest.mark.slow
def test_a_split_smaller_than_one_batch_is_one_line_without_the_libraries_chatter(data_dir,
                                                                                  tmp_path):
  # 'train[:2]' of the 3-class folder: 2 images per class, 6 in all, against a batch of 8.
  status, lines = _sila_train(tmp_path, cli_overrides(data_dir, train_split='train[:2]'))
  assert status == 1
  assert lines == ["train.py: error: The training split 'train[:2]' gives 6 examples (3 per "
                   'device), fewer than one global batch of 8: every batch would hold images '
                   'twice. Use a larger split or a smaller batch_size.']


def test_a_split_smaller_than_two_batches_trains_with_a_warning(tiny_config, caplog):
  tiny_config.batch_size = 24  # 40 images, 5 per device, against 3 per device in a batch.
  with caplog.at_level(logging.WARNING):
    plan = train.plan_run(tiny_config)
  assert plan.steps_per_epoch == 1
  assert ("The training split 'train' gives 40 examples (5 per device), fewer than two global "
          'batches of 24: the batches that run past the end of an epoch hold some images '
          'twice.') in caplog.text


def test_the_libraries_info_lines_are_dropped_and_warnings_kept(monkeypatch):
  handler = logging.Handler()
  monkeypatch.setattr(cli.absl_logging, 'get_absl_handler', lambda: handler)
  cli.quiet_library_logs()
  cli.quiet_library_logs()  # Once is enough.
  assert len(handler.filters) == 1

  def record(module, level):
    return logging.LogRecord('x', level, module.__file__, 1, 'message', None, None)
  assert not handler.filter(record(jax._src.xla_bridge, logging.INFO))  # pylint: disable=protected-access
  assert handler.filter(record(jax._src.xla_bridge, logging.WARNING))  # pylint: disable=protected-access
  assert handler.filter(record(train, logging.INFO))


def test_a_signal_before_the_first_step_raises_at_once_and_after_it_is_recorded():
  with pytest.raises(train.StoppedBeforeTraining, match='^SIGTERM$'):
    with train.StopRequests():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # The handler raises during the sleep.
  previous = signal.getsignal(signal.SIGTERM)
  with train.StopRequests() as stops:
    stops.training_began()
    assert stops.first() is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert stops.first() == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is previous  # Restored.


def test_train_and_evaluate_stopped_during_start_up_reports_nothing_saved(tiny_config, tmp_path,
                                                                          monkeypatch):
  def load_and_get_stopped(*args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
  monkeypatch.setattr(train.input_pipeline, 'load_train_shards', load_and_get_stopped)
  result = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert result == {'status': 'stopped', 'stopped_by': 'SIGTERM', 'saved': False, 'step': None,
                    'train': {}, 'val': {}, 'diverged': [None]}


@pytest.mark.parametrize('sig, status', [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_command_signalled_before_the_first_step_exits_at_once_in_one_line(sig, status):
  # The process sleeps in C (time.sleep), as in a compilation: only the watcher can end it.
  script = (
      'import os, signal, time\n'
      'from sila_jax.training import train\n'
      'with train.StopRequests(exit_at_once=True, message=lambda by: f"stopped by {by}"):\n'
      f'  os.kill(os.getpid(), {int(sig)})\n'
      '  time.sleep(60)\n')
  start = time.perf_counter()
  process = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=QUIET_ENV,
                           capture_output=True, text=True, timeout=120)
  assert process.returncode == status, process.stderr
  assert process.stderr.splitlines()[-1] == f'stopped by {train.STOPPED_BY[sig]}'
  assert time.perf_counter() - start < 30


@pytest.mark.slow
def test_sila_train_sent_sigterm_while_it_compiles_exits_at_once(data_dir, tmp_path):
  # WRN-28-10's step takes long to compile on a CPU: the signal arrives during it.
  overrides = cli_overrides(data_dir, model='wrn28_10', width=1.0)
  log_path = tmp_path / 'train.log'
  workdir = str(tmp_path / 'run')
  process = launch('train.py', workdir, overrides, log_path)
  deadline = time.time() + 300
  while 'Training steps' not in open(log_path).read():
    assert process.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  sent = time.perf_counter()
  process.communicate(timeout=120)
  waited = time.perf_counter() - sent
  log = open(log_path).read()
  assert process.returncode == 0, log[-3000:]
  assert log.splitlines()[-1] == train.stopped_early(workdir, 'SIGTERM')
  assert waited < 10, waited
  assert not saved_steps(workdir)


def test_the_experiment_runner_stopped_by_ctrl_c_raises_keyboard_interrupt(monkeypatch,
                                                                          tmp_path):
  monkeypatch.setattr(running, 'train_group', lambda *args, **kwargs: 'Ctrl-C')
  with pytest.raises(KeyboardInterrupt):  # cli.run makes it one line and exit status 130.
    running.run_grid('configs/grids/smoke.py', str(tmp_path), {})
  monkeypatch.setattr(running, 'train_group', lambda *args, **kwargs: 'SIGTERM')
  assert running.run_grid('configs/grids/smoke.py', str(tmp_path), {}) == []
