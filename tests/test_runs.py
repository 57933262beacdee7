"""Many runs as one computation: each run trains as it would alone."""
import chex
import jax
import numpy as np
import pytest

from sila_jax import config_checks
from sila_jax.errors import ConfigError
from sila_jax.evaluation import evaluate
from sila_jax.evaluation import export
from sila_jax.training import metrics
from sila_jax.training import runs
from sila_jax.training import train
from tests.helpers import make_folder

# Four runs with their own seeds and settings; run 3 repeats run 0's seed.
RUNS = {'seed': (0, 1, 2, 0), 'sila_weight': (0.0, 1.0, 0.5, 2.0),
        'sila_kl_weight': (0.0, 1.0, 0.0, 0.0), 'label_smoothing': (0.0, 0.1, 0.0, 0.0),
        'loss_scale': (1.0, 1.0, 1.0, 2.0), 'learning_rate': (0.02, 0.01, 0.04, 0.02),
        'weight_decay': (5e-4, 0.0, 1e-3, 5e-4),
        'rescale_backbone_grad': (False, True, False, False)}
# Runs trained together and alone add in different orders, so they agree to rounding, which
# BatchNorm on few images and large steps amplify: with 2 images per device a bias drifted
# 0.6 % in 3 steps on another x86 CPU (at learning rate 0.1 here, 0.3 %). With 16 images per
# device, two steps and these learning rates, the largest differences measured here were
# 1.5e-6 absolute in the exported variables and 1.6e-6 relative in the validation loss (run
# 3, whose loss scale and Siamese weight make the largest step; the others 1.2e-7 and
# 1.3e-7), and the first step's losses agreed bit for bit; the tolerances leave a factor of
# about 60.
PARAMS_RTOL, PARAMS_ATOL, LOSS_RTOL = 1e-4, 1e-4, 1e-4


@pytest.fixture(scope='session')
def hundred_sixty_images(tmp_path_factory):
  """10 classes x 16 random JPEGs: 20 images for each of the 8 devices."""
  return make_folder(tmp_path_factory.mktemp('160'), per_class=16,
                     classes=[f'class_{i}' for i in range(10)])


@pytest.fixture
def runs_config(tiny_config, hundred_sixty_images):
  """tiny_config with BatchNorm batches of 16 images per device, for two steps."""
  tiny_config.update(data_dir=hundred_sixty_images, batch_size=128, eval_batch_size=160,
                     num_train_steps=2)
  tiny_config.optimizer.learning_rate = 0.02
  return tiny_config


def exported(config, workdir, run=0):
  """Run `run`'s exported plain-model variables, and the export's directory."""
  export_dir = f'{workdir}/export_{run}'
  export.export(config, workdir, export_dir, run=run)
  return export.load_export(export_dir).variables, export_dir


def assert_trains_like_alone(together, workdir, run, tmp_path):
  """Run `run` of the computation `together` trained in `workdir` ends as it does alone."""
  alone = runs.run_config(together, run)
  alone_dir = str(tmp_path / f'alone_{run}')
  alone_val = train.train_and_evaluate(alone, alone_dir)['val']
  first = metrics.read(workdir, metrics.TRAIN)[0][metrics.name('loss', run=run)]
  assert metrics.read(alone_dir, metrics.TRAIN)[0]['loss'] == pytest.approx(first, rel=1e-6)
  val = metrics.read(workdir, metrics.VALIDATION)[-1][metrics.name('loss', run=run)]
  assert alone_val['loss'] == pytest.approx(val, rel=LOSS_RTOL)
  ours, export_dir = exported(together, workdir, run=run)
  theirs, _ = exported(alone, alone_dir)
  chex.assert_trees_all_close(ours, theirs, rtol=PARAMS_RTOL, atol=PARAMS_ATOL)
  return alone, export_dir


@pytest.mark.slow
def test_four_runs_together_train_like_four_runs_alone(runs_config, tmp_path):
  together = runs_config.copy_and_resolve_references()
  together.num_runs = 4
  together.runs.update(RUNS)
  workdir = str(tmp_path / 'together')
  result = train.train_and_evaluate(together, workdir)
  assert result['diverged'] == [None] * 4
  accuracies = [result['val'][f'run_{r}/accuracy'] for r in range(4)]
  assert result['val']['accuracy'] == pytest.approx(np.mean(accuracies))
  assert result['val']['accuracy_std'] == pytest.approx(np.std(accuracies, ddof=1))
  for r in range(4):
    alone, export_dir = assert_trains_like_alone(together, workdir, r, tmp_path)
    assert alone.num_runs == 1 and alone.seed == RUNS['seed'][r]
    assert alone.optimizer.learning_rate == RUNS['learning_rate'][r]
    assert alone.sila.rescale_backbone_grad == RUNS['rescale_backbone_grad'][r]
  # The last exported run evaluates as it did inside the batch.
  evaluated = evaluate.evaluate_export(runs_config, export_dir)
  assert evaluated['loss'] == pytest.approx(result['val']['run_3/loss'], rel=LOSS_RTOL)
  # Runs 0 and 3 share a seed but not their settings, and end apart.
  run_0, _ = exported(together, workdir, run=0)
  run_3, _ = exported(together, workdir, run=3)
  assert not np.allclose(run_0['params']['head']['Dense_0']['kernel'],
                         run_3['params']['head']['Dense_0']['kernel'])


@pytest.mark.slow
def test_a_diverging_run_stops_alone_and_the_other_trains_as_it_would_alone(runs_config,
                                                                            tmp_path):
  together = runs_config.copy_and_resolve_references()
  together.num_runs = 2
  together.runs.loss_scale = (1.0, 3e38)  # Run 1's loss (about 2.3) overflows at once.
  workdir = str(tmp_path / 'together')
  result = train.train_and_evaluate(together, workdir)
  assert result['status'] == 'trained' and result['diverged'] == [None, 1]
  assert result['val']['diverged_runs'] == 1 and result['val']['run_1/diverged_step'] == 1
  assert result['val']['accuracy'] == result['val']['run_0/accuracy']  # Run 1 left out.
  last = metrics.read(workdir, metrics.TRAIN)[-1]
  assert (last['diverged_runs'], last['run_0/diverged_step'], last['run_1/diverged_step']) == (
      1, 0, 1)
  # Run 1 kept its last finite state: the initial one.
  diverged, _ = exported(together, workdir, run=1)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(diverged))
  evaluated = evaluate.evaluate_workdir(together, workdir)
  assert (evaluated['diverged_runs'], evaluated['run_1/diverged_step']) == (1, 1)
  assert_trains_like_alone(together, workdir, 0, tmp_path)


@pytest.mark.slow
def test_a_run_with_sila_weight_zero_trains_the_plain_model(tiny_config, tmp_path):
  plain = tiny_config.copy_and_resolve_references()
  plain.sila.enabled = False
  train.train_and_evaluate(plain, str(tmp_path / 'plain'))
  tiny_config.sila.weight = 0.0
  train.train_and_evaluate(tiny_config, str(tmp_path / 'weight_0'))
  expected, _ = exported(plain, str(tmp_path / 'plain'))
  got, _ = exported(tiny_config, str(tmp_path / 'weight_0'))
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_runs_of_dml_peers_export_and_evaluate_each_peer_of_each_run(tiny_config, tmp_path):
  tiny_config.update(num_runs=2, num_train_steps=2)
  tiny_config.dml.num_peers = 2
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(tiny_config, workdir)
  assert {'run_1/peer_1/accuracy', 'run_0/ensemble/loss'} <= set(result['val'])
  export_dir = str(tmp_path / 'export')
  description = export.export(tiny_config, workdir, export_dir, peer=1, run=1)
  assert (description['run'], description['peer']) == (1, 1)
  evaluated = evaluate.evaluate_export(tiny_config, export_dir)
  assert evaluated['loss'] == pytest.approx(result['val']['run_1/peer_1/loss'], rel=1e-5)
  with pytest.raises(ConfigError, match='run=2, but the config has num_runs=2'):
    export.export(tiny_config, workdir, export_dir, run=2)


# Each neighbour's numeric settings, one value per run; run 1's differ from the defaults.
NEIGHBOUR_RUNS = {
    'one': {'one_temperature': (3.0, 1.5)},
    'clilr': {'clilr_beta': (0.5, 0.8), 'clilr_temperature': (2.0, 4.0)},
    'byot': {'byot_alpha': (0.1, 0.5), 'byot_temperature': (3.0, 1.5),
             'byot_feature_weight': (1e-6, 1e-2)},
}


@pytest.mark.slow
@pytest.mark.parametrize('name', NEIGHBOUR_RUNS)
def test_runs_of_a_neighbour_train_with_their_own_settings_like_alone(runs_config, tmp_path,
                                                                      name):
  together = runs_config.copy_and_resolve_references()
  together.update(method=name, num_runs=2)
  together.runs.update(NEIGHBOUR_RUNS[name])
  workdir = str(tmp_path / 'together')
  train.train_and_evaluate(together, workdir)
  # Run 1 alone has its settings in the method's fields, and its first loss (which each
  # setting changes) equals run 1's inside the computation. Here each method's run 1 ended
  # bit for bit as alone; the tolerances are those measured for SiLa's runs above.
  alone, _ = assert_trains_like_alone(together, workdir, 1, tmp_path)
  for field, values in NEIGHBOUR_RUNS[name].items():
    assert config_checks.get_field(alone, runs.FIELDS[field]) == values[1]


@pytest.mark.parametrize('field, value, message', [
    ('runs.sila_weight', (1.0, 0.0), 'runs.sila_weight lists 2 values but num_runs is 3'),
    ('runs.seed', (0.5, 1.0, 2.0), r'runs.seed must list numbers \(integers\)'),
    ('runs.label_smoothing', (0.0, 1.5, 0.0), r'label_smoothing must be in \[0, 1\)'),
    ('runs.loss_scale', (1.0, 0.0, 1.0), 'loss_scale must be positive'),
    ('runs.learning_rate', (0.1, 0.0, 0.1), 'optimizer.learning_rate must be positive'),
    ('runs.weight_decay', (0.0, -1e-4, 0.0), 'optimizer.weight_decay must not be negative'),
    ('runs.rescale_backbone_grad', (1, 0, 1), r'runs.rescale_backbone_grad must list True or '
                                              r'False, got \(1, 0, 1\)'),
])
def test_per_run_values_are_checked(tiny_config, tmp_path, field, value, message):
  tiny_config.num_runs = 3
  tiny_config.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))


def test_summaries_hold_means_deviations_and_every_run():
  summary = runs.summarize({'accuracy': np.array([0.5, 0.7]), 'loss': np.array([1.0, 3.0])})
  assert summary == pytest.approx({
      'accuracy': 0.6, 'loss': 2.0, 'accuracy_std': 0.1 * 2**0.5, 'loss_std': 2**0.5,
      'run_0/accuracy': 0.5, 'run_1/accuracy': 0.7, 'run_0/loss': 1.0, 'run_1/loss': 3.0})
  assert runs.summarize({'accuracy': np.array([0.5])}) == {'accuracy': 0.5}


def test_settings_default_to_the_config_fields(tiny_config):
  tiny_config.update(num_runs=3, seed=7, label_smoothing=0.1)
  tiny_config.runs.sila_weight = (0.0, 1.0, 2.0)
  tiny_config.runs.rescale_backbone_grad = (False, True, False)
  settings = runs.settings(tiny_config)
  np.testing.assert_array_equal(settings['seed'], [7, 8, 9])
  np.testing.assert_array_equal(settings['rescale_backbone_grad'], [0.0, 1.0, 0.0])
  np.testing.assert_allclose(settings['learning_rate'], [tiny_config.optimizer.learning_rate] * 3)
  np.testing.assert_allclose(settings['label_smoothing'], [0.1] * 3)
  np.testing.assert_allclose(settings['sila_weight'], [0.0, 1.0, 2.0])
  chex.assert_shape(list(settings.values()), (3,))
