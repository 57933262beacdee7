"""experiments.running: a group trained, its runs' results saved, skipped, reused, exported
and summarised."""
import csv
import json
import os

import pytest

from sila_jax.configs.grids import smoke
from sila_jax.evaluation import evaluate
from sila_jax.evaluation import export
from sila_jax.experiments import planning
from sila_jax.experiments import running
from sila_jax.training import metrics
from sila_jax.training import runs
from tests.helpers import record


def save(out, run, accuracy, diverged_step=None):
  """Writes `run`'s result into `out` as train_group would, with made-up numbers."""
  path = os.path.join(out, run.result_path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({**record(run.arm, run.seed, accuracy, diverged_step), 'config': run.digest}, f)


def test_a_runs_own_figures_lose_its_name_and_one_runs_keep_theirs():
  summary = runs.summarize({'loss': [1.0, 2.0], 'peer_1/accuracy': [0.25, 0.5]})
  assert running.own(summary, 1) == {'loss': 2.0, 'peer_1/accuracy': 0.5}
  alone = runs.summarize({'loss': [1.0], 'peer_1/accuracy': [0.25]})
  assert running.own(alone, None) == alone == {'loss': 1.0, 'peer_1/accuracy': 0.25}


def test_the_history_is_one_runs_main_loss_and_validation_accuracy(tmp_path):
  writer = metrics.Writer(str(tmp_path), lambda line: None)
  for step in (1, 2):
    writer.write(metrics.TRAIN, step, runs.summarize({'loss_main': [step, 10.0 * step],
                                                      'loss': [0.0, 0.0]}))
  writer.write(metrics.VALIDATION, 2, runs.summarize({'accuracy': [0.25, 0.5]}))
  writer.close()
  assert running.history(str(tmp_path), 1) == {'train_loss_main': [[1, 10.0], [2, 20.0]],
                                               'val_accuracy': [[2, 0.5]]}
  assert running.history(str(tmp_path / 'none'), None) == {'train_loss_main': [],
                                                           'val_accuracy': []}


def test_a_finished_run_counts_while_its_config_is_unchanged_and_can_be_reused(tmp_path):
  planned = planning.plan(smoke.get_grid(), {})
  other, out = str(tmp_path / 'other'), str(tmp_path / 'out')
  save(other, planned[0], 0.5)
  assert running.finished(planned[0], other)['val_accuracy'] == 0.5
  assert running.finished(planned[1], other) is None
  changed = planning.plan(smoke.get_grid(), {'num_train_steps': 3})[0]
  assert running.finished(changed, other) is None  # Made with another config.
  renamed = [planning.Cell('baseline', run.seed, run.config) for run in planned[:2]]
  assert running.reuse(renamed, out, [other]) == 1
  assert running.finished(renamed[0], out)['arm'] == 'baseline'
  assert running.reuse(renamed, out, [other]) == 0  # Finished here now.


def test_summaries_of_saved_runs_carry_intervals_and_divergence(tmp_path):
  grid = smoke.get_grid()
  grid['seeds'] = (0, 1, 2)
  planned = planning.plan(grid, {})
  out = str(tmp_path)
  assert running.write_summaries(grid, planned, out, 'the command', 'Title.') == []
  assert os.listdir(out) == []  # Nothing finished: nothing written.
  accuracies = {('plain', 0): 0.5, ('plain', 1): 0.6, ('plain', 2): 0.7,
                ('sila_joint', 0): 0.52, ('sila_joint', 1): 0.63, ('sila_joint', 2): 0.1}
  for run in planned:
    save(out, run, accuracies[run.arm, run.seed],
         7 if run.seed == 2 and run.arm == 'sila_joint' else None)
  rows = running.write_summaries(grid, planned, out, 'the command', 'Title.')
  assert [row['n'] for row in rows] == [3, 2]
  with open(tmp_path / 'summary.csv') as f:
    joint = list(csv.DictReader(f))[1]
  assert joint['diverged'] == '1' and joint['vs_plain_n'] == '2'
  assert float(joint['vs_plain_mean']) == pytest.approx(0.025)
  assert float(joint['vs_plain_ci_low']) < 0.025 < float(joint['vs_plain_ci_high'])
  with open(tmp_path / 'runs.csv') as f:
    assert [r['diverged_step'] for r in csv.DictReader(f)] == ['', '', '', '', '', '7']
  summary = (tmp_path / 'summary.md').read_text()
  assert summary.startswith('Title.\n\nBudget: ') and 'Command: `the command`.' in summary
  with open(tmp_path / 'accuracy.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_train_group_exports_the_chosen_seeds(ten_class_folder, tmp_path):
  planned = planning.plan(smoke.get_grid(), {
      'data_dir': ten_class_folder, 'train_split': 'train', 'eval_split': 'train',
      'num_train_steps': 2, 'log_every_steps': 2, 'eval_every_steps': 2,
      'checkpoint_every_steps': 2, 'eval_batch_size': 40})  # 40: divides by the 8 devices.
  members = planning.group(planned, max_runs=2)[0]
  assert [(r.arm, r.seed) for r in members] == [('plain', 0), ('plain', 1)]
  out = str(tmp_path)
  assert running.train_group(members, out, export_seeds=(1,)) is None  # Not stopped.
  assert not os.path.exists(running.export_dir(out, members[0]))
  export_dir = running.export_dir(out, members[1])
  assert export_dir == os.path.join(out, 'exports', 'plain', 'seed_1')
  assert export.load_export(export_dir).step == 2
  saved = running.finished(members[1], out)
  assert saved['diverged_step'] is None and saved['group_runs'] == 2
  assert [step for step, _ in saved['history']['train_loss_main']] == [2]
  # The export is run 1 of the computation: it evaluates to that run's validation loss.
  evaluated = evaluate.evaluate_export(members[1].config, export_dir)
  assert evaluated['loss'] == pytest.approx(saved['val_loss'], rel=1e-5)
  assert evaluated['loss'] != pytest.approx(running.finished(members[0], out)['val_loss'],
                                            rel=1e-5)
