"""benchmarks.kernels runs every form of each selectable kernel and writes its JSON lines."""
import json

from benchmarks import kernels
from sila_jax import conv
from sila_jax import dynamic_conv


def test_kernels_quick_writes_every_form(tmp_path):
  out = tmp_path / 'kernels.jsonl'
  kernels.main(['--quick', '--out', str(out)])
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert {(r['kernel'], r['form']) for r in records} == (
      {('peer_conv', form) for form in conv.FORMS}
      | {('dynamic_conv', form) for form in dynamic_conv.FORMS})
  for record in records:
    assert record['backend'] == 'cpu' and record['ms'] > 0 and record['compile_s'] > 0
