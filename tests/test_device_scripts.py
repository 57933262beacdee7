"""The device scripts stop in one line, before any work, when what must be carried is not;
benchmarks/device_prepare.sh names what it lacks. No GPU: the checks run first."""
import os
import re
import subprocess
import sys

from tests.helpers import ROOT, xla_flags


def run_script(args, tmp_path, python_dir=os.path.dirname(sys.executable), **env_vars):
  """bash ARGS from the checkout, its python3 the one in `python_dir` (this test's Python)."""
  env = {**os.environ, 'XLA_FLAGS': xla_flags(), 'TMPDIR': str(tmp_path), **env_vars,
         'PATH': python_dir + os.pathsep + os.environ['PATH']}
  env.pop('OUT', None)
  return subprocess.run(['bash', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


def test_device_check_without_the_data_stops_in_one_line_naming_its_carry_entry(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  before = os.listdir(os.path.join(ROOT, 'results'))
  process = run_script(['benchmarks/device_check.sh'], tmp_path, SILA_DEVICE_DATA=str(empty))
  assert process.returncode == 3 and process.stdout == ''
  [line] = process.stderr.splitlines()
  assert line.startswith(f'device_check.sh: no {empty}/cifar10-train-jpeg.tar.gz: the carry '
                         'entry ".device_data" is missing')
  assert 'bash benchmarks/device_prepare.sh' in line
  assert os.listdir(tmp_path) == ['empty']  # Not even the scratch folder was made,
  assert os.listdir(os.path.join(ROOT, 'results')) == before  # nor a results folder.


def test_device_check_without_the_wheels_stops_in_one_line_naming_its_carry_entry(tmp_path):
  # An image without ml_collections, tensorboardX and tqdm: this Python without site-packages.
  shim = tmp_path / 'bin' / 'python3'
  shim.parent.mkdir()
  shim.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
  shim.chmod(0o755)
  empty = tmp_path / 'empty'
  empty.mkdir()
  process = run_script(['benchmarks/device_check.sh', '--quick'], tmp_path,
                       python_dir=str(shim.parent), SILA_DEVICE_WHEELS=str(empty))
  assert process.returncode == 3 and process.stdout == ''
  [line] = process.stderr.splitlines()
  assert line.startswith(f'device_check.sh: the image lacks ml_collections tensorboardX tqdm '
                         f'and {empty}/ holds no wheels: the carry entry ".device_wheels" is '
                         'missing')
  assert 'bash benchmarks/device_prepare.sh' in line


def test_device_scripts_reject_an_unknown_argument_in_one_line(tmp_path):
  process = run_script(['benchmarks/device_check.sh', '--dry_run'], tmp_path)
  assert process.returncode == 2
  assert process.stderr.splitlines() == [
      "device_check.sh: unknown argument '--dry_run' (it takes --quick --out_dir)"]


def test_device_prepare_without_the_tarball_stops_in_one_line(tmp_path):
  missing = tmp_path / 'nowhere.tar.gz'
  process = run_script(['benchmarks/device_prepare.sh', str(missing)], tmp_path)
  assert process.returncode == 1
  assert process.stderr.splitlines() == [
      f'device_prepare.sh: no CIFAR-10 tarball at {missing} (give its path as the argument or '
      'in SILA_TARBALL)']


def test_device_prepare_downloads_what_device_env_checks():
  def listed(path, name):
    with open(os.path.join(ROOT, path)) as f:
      return re.search(rf'^{name}=\(([^)]*)\)$', f.read(), re.M).group(1).split()
  assert (listed('benchmarks/device_prepare.sh', 'packages')
          == listed('benchmarks/device_env.sh', 'carried_modules'))
