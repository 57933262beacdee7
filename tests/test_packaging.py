"""The installed package: built from pyproject.toml, run outside the checkout by its scripts."""
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.helpers import ROOT, make_folder, xla_flags

pytestmark = pytest.mark.slow  # pip builds and installs the package; its command trains.


def copy_of_the_checkout(destination):
  """The checkout's files that git tracks or would (no build/ or *.egg-info left over from an
  earlier build, whose stale modules would end up in the wheel)."""
  listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  for name in listed:
    source = os.path.join(ROOT, name)
    if os.path.lexists(source):
      os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
      shutil.copy2(source, os.path.join(destination, name), follow_symlinks=False)
  return str(destination)


def test_installed_commands_train_and_plot_outside_the_checkout(tmp_path):
  target = tmp_path / 'site'  # The package alone; its dependencies are this environment's.
  source = copy_of_the_checkout(tmp_path / 'checkout')
  installed = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                              '--target', str(target), source], capture_output=True, text=True)
  assert installed.returncode == 0, installed.stderr[-3000:]
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {**os.environ, 'PYTHONPATH': str(target), 'XLA_FLAGS': xla_flags()}

  def run(*command):
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done

  where = run(sys.executable, '-c', 'import sila_jax; print(sila_jax.__path__[0])')
  assert where.stdout.strip() == str(target / 'sila_jax')
  for name in ('configs/quick.py', 'configs/default.py', 'configs/grids/ablation.py',
               'commands/train.py', 'commands/__init__.py'):
    assert os.path.isfile(target / 'sila_jax' / name), name
  listing = run(sys.executable, '-m', 'sila_jax', '--help').stdout
  for name in ('train', 'eval', 'export', 'plot'):
    assert f'(sila-{name})' in listing and os.path.exists(target / 'bin' / f'sila-{name}')

  data_dir = make_folder(tmp_path / 'data', per_class=6)
  workdir = tmp_path / 'run'
  trained = run(str(target / 'bin' / 'sila-train'), '--config=quick:folder',
                f'--workdir={workdir}', f'--config.data_dir={data_dir}',
                '--config.num_classes=3', '--config.train_split=train[:-2]',
                '--config.eval_split=train[-2:]', '--config.width=0.25',
                '--config.batch_size=8', '--config.num_epochs=1', '--config.eval_batch_size=8')
  assert 'validation  accuracy' in trained.stderr
  run(str(target / 'bin' / 'sila-plot'), str(workdir))
  with Image.open(workdir / 'curves.png') as png:
    assert png.format == 'PNG'
