"""DML peers: the mimicry term, the stop-gradient, K = 1, vmapped peers, devices, eval, export."""
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sila_jax import methods
from sila_jax.evaluation import evaluate
from sila_jax.evaluation import export
from sila_jax.methods import losses
from sila_jax.methods import peers
from sila_jax.training import checkpoint
from sila_jax.training import metrics
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import train
from sila_jax.training import train_step as train_step_lib
from tests.helpers import batches, make_tiny_config, one_run, plain_param_count, run, setup


@pytest.fixture
def dml_config(tiny_config):
  tiny_config.dml.num_peers = 2
  return tiny_config


def peer_setup(config):
  """(method, schedule, initial peer state) as train_and_evaluate builds them; dynamic
  convolutions anneal over 5 steps."""
  method = methods.create(config, bn_axis_name=parallel_lib.AXIS, steps_per_epoch=5)
  schedule = optimizer_lib.learning_rate_schedule(config, 10, 5)
  tx = optimizer_lib.create_optimizer(config, schedule)
  state = train_step_lib.create_train_state(method, tx, jax.random.PRNGKey(0), (32, 32, 3))
  return method, schedule, state


def peer_state(state, peer):
  """Peer `peer`'s slice of a homogeneous peer state, as a single model's state (one peer)."""
  def take(tree):
    return (jax.tree_util.tree_map(lambda x: x[peer:peer + 1], tree[0]),)
  return state.replace(params=take(state.params), batch_stats=take(state.batch_stats),
                       opt_state=take(state.opt_state))


def test_mimicry_term_matches_a_hand_computation():
  logits = np.random.default_rng(0).normal(size=(3, 4, 5)) * 3
  temperature = 2.0
  p = np.exp(logits / temperature)
  p /= p.sum(-1, keepdims=True)
  expected = np.zeros((3, 4))
  for i in range(3):
    for j in range(3):
      if j != i:
        expected[i] += temperature**2 * np.sum(p[j] * (np.log(p[j]) - np.log(p[i])), -1) / 2
  got = losses.mimicry_loss(jnp.asarray(logits, jnp.float32), temperature)
  chex.assert_shape(got, (3, 4))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_mimicry_gradient_reaches_only_the_peer_itself():
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  for i in range(3):
    grad = jax.grad(lambda z, i=i: jnp.sum(losses.mimicry_loss(z)[i]))(logits)
    for j in range(3):
      if j == i:
        assert np.abs(grad[j]).max() > 1e-3
      else:
        assert np.all(grad[j] == 0.0)


@pytest.mark.slow
def test_a_peers_objective_sends_no_gradient_into_another_peer(dml_config):
  groups = methods.create(dml_config).groups  # No data axis: BatchNorm over this batch alone.
  variables = peers.init_variables(groups, jax.random.PRNGKey(0), (32, 32, 3))
  batch = batches(1)[0]

  def objective_of_peer_0(params):
    logits, siamese_logits, _ = peers.apply(
        groups, {'params': params, 'batch_stats': variables['batch_stats']}, batch['image'],
        train=True)
    loss, _ = losses.sila_loss(logits[0], siamese_logits[0], batch['label'])
    return loss + jnp.mean(losses.mimicry_loss(logits)[0])

  grads = jax.jit(jax.grad(objective_of_peer_0))(variables['params'])[0]
  norms = [jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda g: np.abs(g[peer]).max(),
                                                            grads)) for peer in (0, 1)]
  assert max(norms[0]) > 1e-3
  assert max(norms[1]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize('model', ['resnet8', 'dy_resnet8'])
def test_vmapped_peers_without_mimicry_train_like_separate_models(dml_config, model):
  dml_config.model = model
  dml_config.dml.weight = 0.0
  method, schedule, state = peer_setup(dml_config)
  devices = jax.devices()[:1]
  data = batches(2, size=8)
  together, _ = run(parallel_lib.ShardMapParallel(one_run(train_step_lib.make_train_step(
      method, schedule, dml_config), dml_config), devices), state, data)
  single = methods.create(peers.peer_config(dml_config, 0), bn_axis_name=parallel_lib.AXIS,
                          steps_per_epoch=5)
  alone = parallel_lib.ShardMapParallel(
      one_run(train_step_lib.make_train_step(single, schedule, dml_config), dml_config),
      devices)
  for peer in (0, 1):
    expected, _ = run(alone, peer_state(state, peer), data)
    chex.assert_trees_all_close(peer_state(together, peer), expected, rtol=1e-5, atol=1e-6)
  # The peers started apart (own keys) and stay apart.
  assert not np.allclose(together.params[0]['head']['Dense_0']['kernel'][0],
                         together.params[0]['head']['Dense_0']['kernel'][1])


def test_peer_outputs_and_state_shapes(tiny_config):
  tiny_config.dml.update(num_peers=3, models=('resnet8', 'wrn16_4', 'wrn16_4'))
  tiny_config.sila.num_heads = 2
  groups = methods.create(tiny_config).groups
  assert [size for _, size in groups] == [1, 2]
  variables = peers.abstract_variables(groups, 32)
  chex.assert_shape(variables['params'][0]['head']['Dense_0']['kernel'], (1, 16, 10))
  chex.assert_shape(variables['params'][1]['head']['Dense_0']['kernel'], (2, 64, 10))
  images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
  for views in (images, jax.ShapeDtypeStruct((4, 3, 32, 32, 3), jnp.float32)):
    logits, siamese_logits, batch_stats = jax.eval_shape(
        lambda v, x: peers.apply(groups, v, x, train=True), variables, views)
    chex.assert_shape(logits, (3, 4, 10))
    chex.assert_shape(siamese_logits, (3, 2, 4, 10))
    chex.assert_trees_all_equal_shapes(batch_stats, variables['batch_stats'])
  logits, _, batch_stats = jax.eval_shape(
      lambda v, x: peers.apply(groups, v, x, train=False), variables, images)
  chex.assert_shape(logits, (3, 4, 10))
  assert batch_stats is None


@pytest.mark.slow
@pytest.mark.parametrize('kind', parallel_lib.KINDS)
def test_eight_devices_match_one(dml_config, kind):
  dml_config.sila.update(num_heads=2, kl_weight=0.5)
  dml_config.dml.temperature = 2.0
  method, schedule, state = peer_setup(dml_config)
  step_fn = one_run(train_step_lib.make_train_step(method, schedule, dml_config), dml_config)
  data = batches(1)
  one_state, one_metrics = run(parallel_lib.create_parallel(kind, step_fn, jax.devices()[:1]),
                               state, data)
  eight_state, eight_metrics = run(parallel_lib.create_parallel(kind, step_fn, jax.devices()[:8]),
                                   state, data)
  chex.assert_trees_all_close(eight_state, one_state, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(eight_metrics, one_metrics, rtol=1e-4, atol=1e-5)
  assert one_metrics[0]['loss_mimicry'] > 0
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), one_state.params, state.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


def test_ensemble_is_the_mean_of_the_peers_probabilities(dml_config):
  method = methods.create(dml_config)
  groups = method.deployable_groups
  variables = peers.init_variables(groups, jax.random.PRNGKey(1), (32, 32, 3))
  batch = batches(1)[0]
  batch['mask'] = np.arange(16) < 12  # The last 4 rows are padding.
  sums = metrics.flatten(jax.device_get(evaluate.make_eval_step(method)(variables, batch, 1.0)))
  logits, _, _ = jax.jit(lambda v, x: peers.apply(groups, v, x, train=False))(variables,
                                                                             batch['image'])
  probs = np.asarray(jax.nn.softmax(logits))
  labels, mask = batch['label'], batch['mask']
  for name, p in [('peer_0', probs[0]), ('peer_1', probs[1]), ('ensemble', probs.mean(0))]:
    assert sums[f'{name}/correct'] == np.sum((p.argmax(-1) == labels) * mask)
    np.testing.assert_allclose(sums[f'{name}/loss'],
                               np.sum(-np.log(p[np.arange(16), labels]) * mask), rtol=1e-5)
  assert sums['count'] == 12 and sums['correct'] == sums['peer_0/correct']


def final_state(config, workdir):
  """The newest checkpoint's whole TrainState, read back as train_and_evaluate would."""
  _, _, _, state = setup(config)
  manager = checkpoint.create_manager(workdir)
  try:
    return checkpoint.restore_newest_readable(manager, jax.eval_shape(lambda: state), config)
  finally:
    manager.close()


def test_one_peer_has_no_mimicry_no_views_and_no_ensemble(tiny_config):
  # What tests/test_train_step.py trains bit for bit as a single model, whatever dml.* says.
  tiny_config.dml.update(num_peers=1, weight=3.0, temperature=2.0, independent_augment=True)
  assert peers.num_views(tiny_config) == 1
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 10))
  assert peers.mimicry(logits, 2.0) == {}
  assert set(peers.predictions(logits)) == {metrics.PEERS}
  tiny_config.dml.num_peers = 2
  assert peers.num_views(tiny_config) == 2
  chex.assert_shape(peers.mimicry(jnp.concatenate([logits, logits]), 2.0)['loss_mimicry'], (2,))


# The tests that read `dml_run` run on one xdist worker, which trains it once.
READS_DML_RUN = pytest.mark.xdist_group('test_peers.dml_run')


@pytest.fixture(scope='module')
def dml_run(ten_class_folder, tmp_path_factory):
  """A 3-step SiLa + DML run of two peers with independent augmentation, on 40 images, and
  its evaluation; shared by the tests below, which read it (a test that trains on works on a
  copy of the config and the workdir)."""
  config = make_tiny_config(ten_class_folder)
  config.dml.update(num_peers=2, independent_augment=True)
  workdir = str(tmp_path_factory.mktemp('dml_run') / 'run')
  result = train.train_and_evaluate(config, workdir)
  evaluated = evaluate.evaluate_workdir(config, workdir)
  return config, workdir, result, evaluated


@pytest.mark.slow
@READS_DML_RUN
def test_eval_reports_every_peer_and_the_ensemble(dml_run):
  config, workdir, result, evaluated = dml_run
  assert {'loss_mimicry', 'peer_0/accuracy', 'peer_1/accuracy', 'peer_1/loss'} <= set(
      result['train'])
  saved = json.load(open(os.path.join(workdir, 'eval_train.json')))
  assert saved == evaluated
  assert {'peer_0/accuracy', 'peer_1/accuracy', 'ensemble/accuracy', 'peer_0/loss',
          'ensemble/loss'} <= set(saved)
  assert saved['accuracy'] == saved['peer_0/accuracy']
  assert saved['num_params'] == plain_param_count(config)  # One peer, deployable alone.
  assert saved['num_examples'] == 40 and saved['step'] == 3
  assert saved['accuracy'] == pytest.approx(result['val']['accuracy'])
  assert saved['ensemble/accuracy'] == pytest.approx(result['val']['ensemble/accuracy'])


@pytest.mark.slow
@READS_DML_RUN
def test_each_peer_exports_alone(dml_run, tmp_path):
  config, workdir, _, evaluated = dml_run
  for peer in (0, 1):
    export_dir = str(tmp_path / f'export_{peer}')
    description = export.export(config, workdir, export_dir, peer=peer)
    exported = export.load_export(export_dir)
    assert set(exported.variables['params']) == {'backbone', 'head'}
    assert description['num_params'] == plain_param_count(config)
    assert description['peer'] == peer and not exported.config.sila.enabled
    from_export = evaluate.evaluate_export(config, export_dir)
    assert from_export['accuracy'] == evaluated[f'peer_{peer}/accuracy']
    assert from_export['loss'] == pytest.approx(evaluated[f'peer_{peer}/loss'], rel=1e-6)


@pytest.mark.slow
@READS_DML_RUN
def test_dml_run_resumes(dml_run, tmp_path):
  config, workdir, _, _ = dml_run
  config = config.copy_and_resolve_references()
  config.num_train_steps = 4
  workdir = str(shutil.copytree(workdir, tmp_path / 'run'))
  result = train.train_and_evaluate(config, workdir)
  assert result['step'] == 4
  # One run of two peers.
  assert final_state(config, workdir).params[0]['head']['Dense_0']['kernel'].shape == (1, 2, 16, 10)


@pytest.mark.slow
def test_heterogeneous_dynamic_peers_train_evaluate_and_export(tiny_config, tmp_path):
  tiny_config.dml.update(num_peers=2, models=('dy_resnet8', 'wrn16_4'))
  tiny_config.num_train_steps = 2
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(tiny_config, workdir)
  evaluated = evaluate.evaluate_workdir(tiny_config, workdir)
  assert result['train']['attention_temperature'] > 1.0  # The DY peer's annealing runs.
  assert {'peer_0/accuracy', 'peer_1/accuracy', 'ensemble/accuracy'} <= set(evaluated)
  for peer in (0, 1):
    described = export.export(tiny_config, workdir, str(tmp_path / f'export_{peer}'), peer=peer)
    assert described['num_params'] == plain_param_count(peers.peer_config(tiny_config, peer))
    assert described['model']['model'] == tiny_config.dml.models[peer]
  assert evaluated['num_params'] == plain_param_count(peers.peer_config(tiny_config, 0))
