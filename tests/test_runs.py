"""Many runs as one computation: each run trains as it would alone."""
import chex
import numpy as np
import pytest

from sila_jax import evaluate
from sila_jax import export
from sila_jax import runs
from sila_jax import train
from sila_jax.errors import ConfigError

# Four runs with their own seeds and loss settings; run 3 repeats run 0's seed.
RUNS = {'seed': (0, 1, 2, 0), 'sila_weight': (0.0, 1.0, 0.5, 2.0),
        'sila_kl_weight': (0.0, 1.0, 0.0, 0.0), 'label_smoothing': (0.0, 0.1, 0.0, 0.0),
        'loss_scale': (1.0, 1.0, 1.0, 2.0)}


def exported(config, workdir, run=0):
  """Run `run`'s exported plain-model variables, and the export's directory."""
  export_dir = f'{workdir}/export_{run}'
  export.export(config, workdir, export_dir, run=run)
  return export.load_export(export_dir).variables, export_dir


def test_four_runs_together_train_like_four_runs_alone(tiny_config, tmp_path):
  # Three steps on BatchNorm batches of 2 images per device amplify rounding (the batched and
  # lone computations add in different orders): at learning rate 0.1 a run drifted 0.3 % in
  # 3 steps, at 0.02 with the head on the final features under 1e-5; the stage-2 adapter's
  # BatchNorm on 2 images adds more (1e-3 on a running mean).
  tiny_config.optimizer.learning_rate = 0.02
  tiny_config.sila.attach = 'features'
  together = tiny_config.copy_and_resolve_references()
  together.num_runs = 4
  together.runs.update(RUNS)
  result = train.train_and_evaluate(together, str(tmp_path / 'together'))
  accuracies = [result['val'][f'run_{r}/accuracy'] for r in range(4)]
  assert result['val']['accuracy'] == pytest.approx(np.mean(accuracies))
  assert result['val']['accuracy_std'] == pytest.approx(np.std(accuracies, ddof=1))
  for r in range(4):
    alone = runs.run_config(together, r)
    assert alone.num_runs == 1 and alone.seed == RUNS['seed'][r]
    assert alone.sila.weight == RUNS['sila_weight'][r]
    workdir = str(tmp_path / f'alone_{r}')
    alone_result = train.train_and_evaluate(alone, workdir)
    assert alone_result['val']['loss'] == pytest.approx(result['val'][f'run_{r}/loss'],
                                                        rel=1e-4)
    ours, export_dir = exported(together, str(tmp_path / 'together'), run=r)
    theirs, _ = exported(alone, workdir)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-4, atol=1e-5)
  # The last exported run evaluates as it did inside the batch.
  evaluated = evaluate.evaluate_export(tiny_config, export_dir)
  assert evaluated['loss'] == pytest.approx(result['val']['run_3/loss'], rel=1e-5)
  # Runs 0 and 3 share a seed but not their loss settings, and end apart.
  run_0, _ = exported(together, str(tmp_path / 'together'), run=0)
  run_3, _ = exported(together, str(tmp_path / 'together'), run=3)
  assert not np.allclose(run_0['params']['head']['Dense_0']['kernel'],
                         run_3['params']['head']['Dense_0']['kernel'])


def test_a_run_with_sila_weight_zero_trains_the_plain_model(tiny_config, tmp_path):
  plain = tiny_config.copy_and_resolve_references()
  plain.sila.enabled = False
  train.train_and_evaluate(plain, str(tmp_path / 'plain'))
  tiny_config.sila.weight = 0.0
  train.train_and_evaluate(tiny_config, str(tmp_path / 'weight_0'))
  expected, _ = exported(plain, str(tmp_path / 'plain'))
  got, _ = exported(tiny_config, str(tmp_path / 'weight_0'))
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize('field, value, message', [
    ('runs.sila_weight', (1.0, 0.0), 'runs.sila_weight lists 2 values but num_runs is 3'),
    ('runs.seed', (0.5, 1.0, 2.0), r'runs.seed must list numbers \(integers\)'),
    ('runs.label_smoothing', (0.0, 1.5, 0.0), r'label_smoothing must be in \[0, 1\)'),
    ('runs.loss_scale', (1.0, 0.0, 1.0), 'loss_scale must be positive'),
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
  settings = runs.settings(tiny_config)
  np.testing.assert_array_equal(settings['seed'], [7, 8, 9])
  np.testing.assert_allclose(settings['label_smoothing'], [0.1] * 3)
  np.testing.assert_allclose(settings['sila_weight'], [0.0, 1.0, 2.0])
  chex.assert_shape(list(settings.values()), (3,))
