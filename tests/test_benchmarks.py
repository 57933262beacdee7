"""The device check's --quick run on CPU: every stage runs and writes what it should."""
import json
import os
import subprocess
import sys

from sila_jax import conv
from sila_jax import dynamic_conv
from tests.test_faults import ROOT


def read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_device_check_quick_runs_every_stage(tmp_path):
  # One CPU device, like one GPU; the script's python3 is this test's Python.
  env = {**os.environ, 'XLA_FLAGS': '',
         'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
  env.pop('OUT', None)
  process = subprocess.run(['bash', 'benchmarks/device_check.sh', '--quick', '--out_dir',
                            str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
  assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
  assert 'devices [CpuDevice(id=0)]' in (tmp_path / 'env.txt').read_text()

  kernels = read(tmp_path / 'kernels.jsonl')
  assert {(r['kernel'], r['form']) for r in kernels} == (
      {('peer_conv', form) for form in conv.FORMS}
      | {('dynamic_conv', form) for form in dynamic_conv.FORMS})
  assert all(r['backend'] == 'cpu' and r['ms'] > 0 for r in kernels)

  [cell] = read(tmp_path / 'throughput.jsonl')  # The host-input loop; training used the device.
  assert (cell['method'], cell['input'], cell['dtype']) == ('sila', 'host', 'bfloat16')
  assert cell['images_per_sec'] > 0 and cell['compile_s'] > 0 and cell['input_wait_fraction'] > 0

  [run] = read(tmp_path / 'training.jsonl')
  assert run['run'] == 'resnet20_sila' and run['steps'] == 2 and run['num_examples'] == 40
  assert 0 <= run['val_accuracy'] <= 1
  summary = (tmp_path / 'summary.md').read_text()
  assert '## Throughput of the training loop' in summary and 'resnet20_sila' in summary
