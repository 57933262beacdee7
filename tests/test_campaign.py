"""The campaign: its estimate and schedule from throughput records, its one-line errors, and
`bash experiments/campaign.sh --quick` stopped by SIGTERM in its second block and rerun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sila_jax.configs import campaign as campaign_config
from sila_jax.experiments import campaign
from sila_jax.experiments import planning
from sila_jax.experiments import running
from tests.helpers import ROOT, xla_flags

ENV = {**os.environ, 'XLA_FLAGS': xla_flags(),  # One CPU device, like one GPU.
       'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
ENV.pop('OUT', None)
GPU = 'Test GPU'


def row(method, num_runs, images_per_sec, device_kind=GPU, **fields):
  """A throughput record as benchmarks.batched_runs writes it (batch 128 per run)."""
  return {'device_kind': device_kind, 'platform': 'gpu', 'model': 'resnet20', 'width': 1.0,
          'method': method, 'dtype': 'bfloat16', 'batch_size': 128, 'num_runs': num_runs,
          'peer_conv': 'sliced', 'images_per_sec': images_per_sec, 'compile_s': 10.0,
          **fields}


def write_rows(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  return str(path)


RECORDS = [row('plain', 1, 40_000), row('plain', 8, 200_000), row('sila', 1, 36_000),
           row('sila', 8, 180_000), row('sila', 16, 190_000)]


def estimator(rows=RECORDS):
  return campaign.Estimator(GPU, rows, 'test rows')


def test_computations_take_the_fastest_measured_form_which_is_not_part_of_a_run():
  grouped = [row('sila', 16, 250_000, peer_conv='grouped'), row('sila', 8, 150_000,
                                                                   peer_conv='grouped')]
  chosen = estimator(RECORDS + grouped)
  assert chosen.peer_conv == 'grouped' and 'fastest measured at 16 runs' in chosen.peer_conv_note
  config = campaign_config.recipe(50)
  seconds, _, _ = chosen.step_seconds(config, 16)  # From the grouped row alone.
  assert seconds == pytest.approx(16 * 128 / 250_000)
  assert estimator([row('sila', 1, 36_000)]).peer_conv == 'sliced'  # 'auto' on a GPU.
  planned = planning.plan(campaign_config.get_campaign()[0]['grid'], {})[0]
  moved = planning.Cell(planned.arm, planned.seed, planned.config.copy_and_resolve_references())
  moved.config.update_from_flattened_dict({'data_dir': '/elsewhere',
                                           'kernels.peer_conv': 'grouped'})
  assert moved.digest == planned.digest
  moved.config.optimizer.learning_rate = 0.3
  assert moved.digest != planned.digest


def test_estimate_interpolates_measured_throughput():
  config = campaign_config.recipe(50)  # SiLa's head computed: the 'sila' rows.
  seconds, compile_s, notes = estimator().step_seconds(config, 8)
  assert seconds == pytest.approx(8 * 128 / 180_000) and compile_s == 10.0 and not notes
  seconds, _, _ = estimator().step_seconds(config, 12)  # Halfway between R = 8 and 16.
  assert seconds == pytest.approx((8 * 128 / 180_000 + 16 * 128 / 190_000) / 2)
  seconds, _, _ = estimator().step_seconds(config, 32)  # Beyond: the aggregate of R = 16.
  assert seconds == pytest.approx(32 * 128 / 190_000)

  estimate = estimator().estimate(config, 8)
  steps = 50 * (45_000 // 128)
  train_s = steps * 8 * 128 / 180_000
  assert train_s < estimate.seconds < train_s + 60  # Compilation, set-up and validation.
  assert estimate.images_per_sec == pytest.approx(180_000)


def test_unmeasured_arms_get_named_factors():
  rows = RECORDS + [row('plain', 1, 20_000, dtype='float32'),
                    row('dml2', 1, 25_000)]
  config = campaign_config.recipe(50)
  config.dtype = 'float32'
  seconds, _, notes = estimator(rows).step_seconds(config, 1)
  assert notes == [f'float32 x2.00 (measured, {GPU})']
  assert seconds == pytest.approx(2 * 128 / 36_000)

  config = campaign_config.recipe(50)
  config.dml.num_peers = 2
  seconds, _, notes = estimator(rows).step_seconds(config, 1)
  assert notes == [f'DML-2 x1.60 (measured, {GPU})']
  assert seconds == pytest.approx(1.6 * 128 / 36_000)

  config = campaign_config.recipe(50, model='dy_resnet20')
  _, _, notes = estimator(rows).step_seconds(config, 1)
  assert notes == [f'dy_resnet20 x3.00 (a guess: no record on {GPU})']


def test_no_record_falls_back_to_a_stated_guess():
  _, _, notes = campaign.Estimator('Other GPU', RECORDS, '').step_seconds(
      campaign_config.recipe(50), 4)
  assert 'a guess of 50,000 images/s' in notes[-1]


@pytest.mark.slow
def test_computations_are_sized_to_fit_a_call_and_listed_with_minutes(tmp_path):
  blocks = campaign.load_campaign('configs/campaign.py')
  headline = blocks[0]
  found = campaign.block_computations(headline, str(tmp_path), estimator())
  assert sum(len(c.members) for c in found) == len(headline.planned) == 35
  assert all(c.estimate.seconds <= campaign.SIZE_SHARE * campaign.DEFAULT_BUDGET_S
             for c in found)
  assert [c.members[0].arm for c in found][-1] == 'plain_f32'  # dtype: its own computation.

  text = campaign.listing(blocks, str(tmp_path), estimator(), campaign.DEFAULT_BUDGET_S)
  assert text.startswith(f'Estimates for {GPU} from test rows.')
  for block in blocks:
    assert f'{block.name}: {len(block.planned)} of {len(block.planned)} runs left' in text
  assert ' GPU min' in text and 'call(s) at --budget_s 420' in text


def test_a_computation_that_does_not_fit_is_not_started(tmp_path, monkeypatch):
  started = []
  monkeypatch.setattr(running, 'train_group',
                      lambda members, out, export_seeds=(): started.append(members) or False)
  throughput = write_rows(tmp_path / 'slow.jsonl', [row('sila', 1, 1.0, device_kind='cpu')])
  done = campaign.run_campaign('configs/campaign_quick.py', str(tmp_path / 'out'), 30.0,
                               device_kind='cpu', throughput=(throughput,))
  assert done == [] and started == []
  log = (tmp_path / 'out' / 'log.md').read_text()
  assert 'no computation finished' in log and 'runs left: 8 of 8' in log


def test_calls_start_in_order_whatever_fits():
  blocks = campaign.load_campaign('configs/campaign_quick.py')

  def computation(seconds):
    return campaign.Computation(blocks[0], blocks[0].planned[:1],
                                campaign.Estimate(seconds, 1.0, ()))
  pending = [computation(s) for s in (300, 200, 100, 500)]
  count, never = campaign.calls(pending, 420)
  assert count == 2 and [c.estimate.seconds for c in never] == [500]


BAD_BLOCK = """from sila_jax.configs import campaign_quick
def get_campaign():
  block = campaign_quick.block('bad', 2)
  block['grid']['arms']['typo'] = {'sila.wieght': 1.0}
  return [block]
"""


@pytest.mark.parametrize('case, message', [
    ('no such file', 'No campaign file configs/no_such.py.'),
    ('no budget', '--budget_s must be positive, got 0.'),
    ('bad block', "bad.py: block bad: Arm typo: Unknown config field 'sila.wieght'; did you mean 'sila.weight'?"),
])
def test_bad_input_is_one_line_before_anything_compiles(tmp_path, case, message):
  bad = tmp_path / 'bad.py'
  bad.write_text(BAD_BLOCK)
  arguments = {'no such file': ['--campaign', 'configs/no_such.py'],
               'no budget': ['--budget_s', '0'],
               'bad block': ['--campaign', str(bad)]}[case]
  process = subprocess.run([sys.executable, '-m', 'sila_jax.experiments.campaign', '--out_dir',
                            str(tmp_path / 'out'), *arguments], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=120)
  assert process.returncode == 1
  assert process.stderr.strip().splitlines()[-1].endswith(message)
  assert not os.path.exists(tmp_path / 'out')


def results(out, block):
  """{run json path: modification time} of the block's finished runs."""
  folder = os.path.join(out, block, 'runs')
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(folder) for f in files if f.endswith('.json')}


def wait_for(condition, process, seconds):
  deadline = time.time() + seconds
  while not condition():
    assert process.poll() is None, 'the campaign ended before the test could stop it'
    assert time.time() < deadline, 'timed out'
    time.sleep(0.1)


@pytest.mark.slow
def test_quick_campaign_stops_on_sigterm_and_continues(tmp_path):
  out = str(tmp_path / 'campaign')
  # The whole quick sweep for this CPU, so that no throughput stage runs and both blocks fit
  # the budget.
  write_rows(os.path.join(out, 'throughput', 'cpu.jsonl'),
             [row(method, r, 200.0 * r, device_kind='cpu', width=0.25, batch_size=16,
                  dtype='float32') for method in ('plain', 'sila') for r in (1, 2)])
  command = ['bash', 'experiments/campaign.sh', '--quick', '--out_dir', out]
  process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  second_work = os.path.join(out, 'second', 'work')
  wait_for(lambda: len(results(out, 'first')) == 4 and any(
      os.path.exists(os.path.join(second_work, d, 'metrics.jsonl'))
      for d in (os.listdir(second_work) if os.path.isdir(second_work) else [])),
      process, 600)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output[-3000:]
  first = results(out, 'first')
  assert len(first) == 4 and results(out, 'second') == {}
  log = open(os.path.join(out, 'log.md')).read()
  assert log.count('\n## ') == 1 and 'first: 4 run(s) finished' in log
  assert 'stopped by SIGTERM in second' in log and 'runs left: 4 of 8' in log
  assert os.path.exists(os.path.join(out, 'first', 'exports', 'sila', 'seed_0'))
  tables = open(os.path.join(out, 'tables.md')).read()
  assert '(`first`)' in tables and '(`second`)' not in tables

  # The rerun unpacks its data into another temporary folder: the finished runs still count.
  again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert 'first: training' not in again.stdout and 'second: training 4 runs' in again.stdout
  assert results(out, 'first') == first and len(results(out, 'second')) == 4
  log = open(os.path.join(out, 'log.md')).read()
  assert log.count('\n## ') == 2 and 'second: 4 run(s) finished' in log
  assert 'blocks complete: second' in log and 'runs left: 0 of 8' in log
  tables = open(os.path.join(out, 'tables.md')).read()
  assert tables.index('(`second`)') < tables.index('(`first`)')  # The newest first.
  summary = open(os.path.join(out, 'second', 'summary.md')).read()
  assert summary in tables and '| sila | 2 |' in summary
  calls = [json.loads(line) for line in open(os.path.join(out, 'computations.jsonl'))]
  assert [(c['block'], c['runs']) for c in calls] == [('first', 4), ('second', 4)]
