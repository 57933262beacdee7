"""The device check's --quick run on CPU, as a user runs it: every stage runs and writes what
it should, into a folder outside the checkout."""
import json
import os
import re
import subprocess
import sys

import pytest

from sila_jax.models import conv
from sila_jax.models import dynamic_conv
from tests.helpers import ROOT, xla_flags


def read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def results_status():
  """`git status` of results/, untracked files included: what a device script may add."""
  return subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all', 'results'],
                        cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_device_check_quick_runs_every_stage_and_leaves_the_checkout_as_it_was(tmp_path):
  # One CPU device, like one GPU; the script's python3 is this test's Python. Its folder
  # outside the checkout is made under TMPDIR.
  env = {**os.environ, 'XLA_FLAGS': xla_flags(), 'TMPDIR': str(tmp_path),
         'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
  env.pop('OUT', None)
  before = results_status()
  process = subprocess.run(['bash', 'benchmarks/device_check.sh', '--quick'], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
  assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
  assert results_status() == before
  [out_dir] = re.findall(r'results in (\S+) \(summary\.md\)', process.stdout)
  assert os.path.dirname(out_dir) == str(tmp_path)
  out = tmp_path / os.path.basename(out_dir)
  assert 'devices [CpuDevice(id=0)]' in (out / 'env.txt').read_text()

  kernels = read(out / 'kernels.jsonl')
  assert {(r['kernel'], r['form']) for r in kernels} == (
      {('peer_conv', form) for form in conv.FORMS}
      | {('dynamic_conv', form) for form in dynamic_conv.FORMS})
  assert all(r['backend'] == 'cpu' and r['ms'] > 0 for r in kernels)

  [cell] = read(out / 'throughput.jsonl')  # The host-input loop; training used the device.
  assert (cell['method'], cell['input'], cell['dtype']) == ('sila', 'host', 'bfloat16')
  assert cell['images_per_sec'] > 0 and cell['compile_s'] > 0 and cell['input_wait_fraction'] > 0

  [run] = read(out / 'training.jsonl')
  assert run['run'] == 'resnet20_sila' and run['steps'] == 2 and run['num_examples'] == 40
  assert 0 <= run['val_accuracy'] <= 1
  summary = (out / 'summary.md').read_text()
  assert '## Throughput of the training loop' in summary and 'resnet20_sila' in summary
