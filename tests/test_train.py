"""train_and_evaluate and evaluation end to end, and the CLIs."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import pytest
from PIL import Image

from sila_jax.errors import DataError
from sila_jax.evaluation import evaluate
from sila_jax.evaluation import export
from sila_jax.experiments import plot
from sila_jax.models import model as model_lib
from sila_jax.training import checkpoint
from sila_jax.training import metrics
from sila_jax.training import train
from tests.helpers import (ROOT, assert_same_scalars, make_folder, make_tiny_config,
                           plain_param_count, xla_flags)

# The tests that read `trained` run on one xdist worker, which trains it once.
READS_TRAINED = pytest.mark.xdist_group('test_train.trained')


@pytest.fixture(scope='module')
def trained(ten_class_folder, tmp_path_factory):
  """A 3-step SiLa run (2 Siamese heads, stage attachment) on 40 images of 10 classes, shared
  by the tests below: they read its workdir (evaluation adds its eval_train.json, the same
  each time) and never change its config; a test that trains on works on a copy."""
  config = make_tiny_config(ten_class_folder)
  config.sila.update(num_heads=2, attach='stage2')
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


@pytest.mark.slow
@READS_TRAINED
def test_training_logs_checkpoints_and_validates(trained):
  config, workdir, result = trained
  assert result['step'] == 3
  assert {'loss', 'loss_main', 'loss_siamese', 'accuracy', 'learning_rate',
          'images_per_sec', 'input_wait'} <= set(result['train'])
  assert result['val']['num_examples'] == 40  # Every validation example, once.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '3']
  assert [r['step'] for r in metrics.read(workdir, metrics.TRAIN)] == [1, 2, 3]
  # 40 images in batches of 16: validation after each epoch (2 steps) and the last step.
  assert [r['step'] for r in metrics.read(workdir, metrics.VALIDATION)] == [2, 3]


@pytest.mark.slow
@READS_TRAINED
def test_tensorboard_reads_the_values_of_metrics_jsonl(trained):
  _, workdir, _ = trained
  assert_same_scalars(workdir)


@pytest.mark.slow
@READS_TRAINED
def test_run_json_describes_the_run(trained):
  config, workdir, _ = trained
  described = json.load(open(os.path.join(workdir, train.RUN_DESCRIPTION)))
  assert described['config'] == json.loads(json.dumps(config.to_dict()))
  assert described['devices'] == {'platform': 'cpu', 'kind': jax.devices()[0].device_kind,
                                  'count': 8, 'processes': 1}
  assert described['packages']['jax'] == jax.__version__
  assert described['command'] == sys.argv and described['start_step'] == 0


@pytest.mark.slow
@READS_TRAINED
def test_plot_draws_the_runs_curves(trained, tmp_path):
  _, workdir, _ = trained
  out = str(tmp_path / 'curves.png')
  plot.main([workdir, '--out', out])
  drawn = plot.curves([workdir])
  train_records = metrics.read(workdir, metrics.TRAIN)
  assert drawn['loss']['train'] == ([1, 2, 3], [r['loss_main'] for r in train_records])
  assert drawn['accuracy']['validation'] == (
      [2, 3], [r['accuracy'] for r in metrics.read(workdir, metrics.VALIDATION)])
  with Image.open(out) as png:
    assert png.format == 'PNG' and png.size[0] > 400


@pytest.mark.slow
@READS_TRAINED
def test_eval_uses_the_plain_models_parameters(trained):
  config, workdir, result = trained
  evaluated = evaluate.evaluate_workdir(config, workdir)
  saved = json.load(open(os.path.join(workdir, 'eval_train.json')))
  assert saved == evaluated
  assert saved['num_params'] == plain_param_count(config)
  assert saved['num_examples'] == 40 and saved['step'] == 3
  assert saved['accuracy'] == pytest.approx(result['val']['accuracy'])
  assert saved['loss'] == pytest.approx(result['val']['loss'], rel=1e-5)


@pytest.mark.slow
@READS_TRAINED
def test_export_holds_the_plain_model_and_evaluates_like_the_checkpoint(trained, tmp_path):
  config, workdir, _ = trained
  export_dir = str(tmp_path / 'export')
  description = export.export(config, workdir, export_dir)
  assert sorted(os.listdir(export_dir)) == ['model.json', 'variables.msgpack']
  exported = export.load_export(export_dir)
  assert set(exported.variables) == {'params', 'batch_stats'}
  assert set(exported.variables['params']) == {'backbone', 'head'}  # No Siamese heads.
  assert description['num_params'] == plain_param_count(config)
  assert model_lib.count_params(exported.variables['params']) == plain_param_count(config)
  assert not exported.config.sila.enabled and exported.config.width == config.width
  assert exported.step == 3 and exported.attention_temperature == 1.0
  from_checkpoint = evaluate.evaluate_workdir(config, workdir)
  from_export = evaluate.evaluate_export(config, export_dir)
  assert from_export == from_checkpoint


@pytest.mark.slow
def test_best_checkpoint_is_kept_besides_the_newest(tiny_config, tmp_path):
  tiny_config.update(num_train_steps=6, eval_every_steps=1, checkpoint_every_steps=1,
                     keep_checkpoints=2)
  tiny_config.optimizer.learning_rate = 0.5  # Validation accuracy moves from step to step.
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config, workdir)
  best = evaluate.evaluate_workdir(tiny_config, workdir, which=checkpoint.BEST)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['5', '6']
  accuracies = {r['step']: r['accuracy'] for r in metrics.read(workdir, metrics.VALIDATION)}
  first_best = max(accuracies, key=lambda step: (accuracies[step], -step))
  assert os.listdir(os.path.join(workdir, 'best')) == [str(first_best)]
  assert best['step'] == first_best and best['accuracy'] == accuracies[first_best]


@pytest.mark.slow
@READS_TRAINED
def test_rerun_resumes_from_the_latest_checkpoint(trained, tmp_path):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.num_train_steps = 4
  workdir = shutil.copytree(workdir, tmp_path / 'run')
  result = train.train_and_evaluate(config, str(workdir))
  assert result['step'] == 4
  assert [r['step'] for r in metrics.read(str(workdir), metrics.TRAIN)] == [1, 2, 3, 4]


def test_label_count_must_match_the_dataset(tiny_config, tmp_path):
  tiny_config.num_classes = 100
  with pytest.raises(DataError, match="num_classes=100 but split 'train' has 10 classes"):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def without_tensorflow(tmp_path):
  """An environment in which `import tensorflow` and `import tensorflow_datasets` fail."""
  for name in ('tensorflow', 'tensorflow_datasets'):
    os.makedirs(tmp_path / 'blocked' / name)
    with open(tmp_path / 'blocked' / name / '__init__.py', 'w') as f:
      f.write(f"raise ImportError('{name} is blocked in this test')\n")
  return {**os.environ, 'PYTHONPATH': str(tmp_path / 'blocked'),
          'XLA_FLAGS': xla_flags(2)}


@pytest.mark.slow
def test_command_line_train_rerun_eval_export_without_tensorflow(tmp_path):
  data_dir = make_folder(tmp_path / 'data', per_class=6)
  workdir = str(tmp_path / 'run')
  overrides = [f'--config.data_dir={data_dir}', '--config.num_classes=3',
               "--config.train_split=train[:-2]", "--config.eval_split=train[-2:]",
               '--config.width=0.25', '--config.batch_size=8', '--config.eval_batch_size=8',
               '--config.num_train_steps=2', '--config.log_every_steps=1']
  env = without_tensorflow(tmp_path)
  blocked = subprocess.run([sys.executable, '-c', 'import tensorflow_datasets'], env=env,
                           capture_output=True, text=True)
  assert 'tensorflow_datasets is blocked' in blocked.stderr

  def run(script, *args):
    return subprocess.run([sys.executable, script, '--config=configs/cifar10_folder.py', *args,
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)

  trained = run('train.py', f'--workdir={workdir}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  # Piped, the progress is log lines (no bar redrawn with \r), each with the ETA.
  assert '\r' not in trained.stdout + trained.stderr
  assert re.search(r'train 2/2 \(100%\) elapsed \d\d:\d\d, ETA 00:00 \| validation  accuracy',
                   trained.stderr), trained.stderr[-3000:]
  again = run('train.py', f'--workdir={workdir}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'the run is already complete at step 2; nothing was retrained' in again.stdout
  evaluated = run('eval.py', f'--workdir={workdir}')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'examples 6' in evaluated.stdout
  saved = json.load(open(os.path.join(workdir, 'eval_train_-2.json')))
  assert saved['num_examples'] == 6 and saved['step'] == 2
  assert 0.0 <= saved['accuracy'] <= 1.0

  exported = run('export.py', f'--workdir={workdir}', '--checkpoint=best')
  assert exported.returncode == 0, exported.stderr[-3000:]
  export_dir = os.path.join(workdir, 'export')
  assert json.load(open(os.path.join(export_dir, 'model.json')))['checkpoint'].endswith('best')
  from_export = run('eval.py', f'--export_dir={export_dir}')
  assert from_export.returncode == 0, from_export.stderr[-3000:]
  best = run('eval.py', f'--workdir={workdir}', '--checkpoint=best')
  assert from_export.stdout == best.stdout
  assert json.load(open(os.path.join(workdir, 'best_train_-2.json')))['num_examples'] == 6
