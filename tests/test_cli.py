"""The commands' shared front: shipped configs found by name, one-line errors."""
import importlib
import os
import subprocess
import sys

import pytest

from sila_jax import config_checks
from sila_jax import errors
from sila_jax.commands import cli
from sila_jax.errors import ConfigError
from tests.helpers import ROOT


@pytest.mark.parametrize('value, name, argument', [
    ('quick', 'quick.py', ''), ('quick:folder', 'quick.py', ':folder'),
    ('cifar10.py', 'cifar10.py', ''), ('configs/cifar10_folder.py', 'cifar10_folder.py', '')])
def test_a_shipped_config_is_found_by_name_from_anywhere(tmp_path, monkeypatch, value, name,
                                                          argument):
  monkeypatch.chdir(tmp_path)
  assert cli.shipped_config(value) == os.path.join(cli.CONFIG_DIR, name) + argument


def test_an_existing_file_wins_and_a_directory_does_not(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'mine.py').write_text('')
  os.mkdir(tmp_path / 'quick')  # A workdir named like a config (sila-train --workdir=quick).
  assert cli.shipped_config('mine.py:arg') == 'mine.py:arg'
  assert cli.shipped_config('quick') == os.path.join(cli.CONFIG_DIR, 'quick.py')
  with pytest.raises(ConfigError, match="no config file 'nonesuch', nor a shipped config"):
    cli.shipped_config('nonesuch')


@pytest.mark.parametrize('name', cli.shipped_configs())
@pytest.mark.parametrize('num_devices', [1, 2, 4, 8])
def test_every_shipped_config_is_valid_on_1_to_8_devices(name, num_devices):
  get_config = importlib.import_module(f'sila_jax.configs.{name}').get_config
  for argument in (('tfds', 'folder') if name == 'quick' else (None,)):
    config = get_config(argument) if argument else get_config()
    config_checks.check_config(config, num_devices)


@pytest.mark.parametrize('config, message', [
    ('--config=nonesuch', "sila-eval: --config=nonesuch: no config file 'nonesuch', nor a "
                          'shipped config of that name ('),
    ('--config=quick:bogus', 'sila-eval: ValueError: quick.py:bogus: choose the data with '
                             'quick.py:tfds or quick.py:folder.')])
def test_a_config_that_cannot_load_is_one_line(tmp_path, config, message):
  done = subprocess.run([sys.executable, '-m', 'sila_jax', 'eval', config,
                         f'--workdir={tmp_path}'], cwd=tmp_path, capture_output=True, text=True,
                        env={**os.environ, 'PYTHONPATH': ROOT})
  assert done.returncode == 1
  assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(message)


def test_overrides_are_read_once_for_every_command():
  argv = ['sila-train', '--config=quick', '--config.sila.weight=2', '--config.seed', '3',
          '--workdir=/tmp/run']
  assert cli.overridden_fields(argv) == ['sila.weight', 'seed']
  assert cli.unknown_override(argv) is None
  assert cli.unknown_override([*argv, '--config.sila.wieght=2']) == (
      "Unknown config field 'sila.wieght'; did you mean 'sila.weight'?")


def test_a_libraries_error_is_reported_by_its_first_line():
  assert errors.first_line(OSError('no such file\n  at line 3\n')) == 'no such file'
  assert errors.first_line(KeyError()) == 'KeyError'
  assert len(errors.first_line(ValueError('x' * 1000))) == 300
