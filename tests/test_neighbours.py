"""SiLa's neighbours ONE, CL-ILR and BYOT: their losses by hand, the gradients their papers
specify, their models' trees and shapes, and each trained, exported and evaluated."""
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sila_jax import config_checks
from sila_jax import methods
from sila_jax.errors import ConfigError
from sila_jax.evaluation import evaluate
from sila_jax.evaluation import export
from sila_jax.methods import losses
from sila_jax.methods import peers
from sila_jax.models import model as model_lib
from sila_jax.training import metrics
from sila_jax.training import train
from sila_jax.training import train_step as train_step_lib
from tests.helpers import (assert_eight_devices_match_one, batches, every_run,
                           plain_param_count, saved_state, setup)

RNG = np.random.default_rng(0)
EVERY = RNG.normal(size=(3, 4, 5)).astype(np.float32) * 2  # m = 3 branches, B = 4, C = 5.
LABELS = np.array([0, 2, 4, 1])


def softmax(x, temperature=1.0):
  x = np.asarray(x, np.float64) / temperature
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ce(logits, labels):
  return -np.log(softmax(logits)[..., np.arange(len(labels)), labels])


def kl(target, p):
  return np.sum(target * (np.log(target) - np.log(p)), axis=-1)


def test_one_loss_by_hand():
  gate = softmax(RNG.normal(size=(4, 3))).astype(np.float32)
  loss, parts = losses.one_loss(EVERY[0], EVERY[1:], gate, LABELS, temperature=3.0)
  ensemble = np.einsum('bm,mbc->bc', gate, EVERY)
  distill = sum(9.0 * kl(softmax(ensemble, 3.0), softmax(z, 3.0)) for z in EVERY)
  expected = ce(EVERY, LABELS).sum(0) + ce(ensemble, LABELS) + distill
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)
  np.testing.assert_allclose(parts['loss_ensemble'], ce(ensemble, LABELS).mean(), rtol=1e-5)
  np.testing.assert_allclose(parts['loss_branches'], ce(EVERY[1:], LABELS).mean(), rtol=1e-5)


def test_one_teacher_takes_no_gradient_from_the_distillation():
  gate = jnp.asarray(softmax(RNG.normal(size=(4, 3))), jnp.float32)

  def distill(logits, gate):
    return losses.one_loss(logits[0], logits[1:], gate, LABELS)[1]['loss_distill']
  to_logits, to_gate = jax.grad(distill, argnums=(0, 1))(jnp.asarray(EVERY), gate)
  assert np.all(to_gate == 0.0)  # The gate only forms the teacher.
  assert np.abs(to_logits).max() > 1e-3  # Each branch is pulled to the teacher.


def test_clilr_loss_by_hand_and_its_gradient_leaves_the_others_alone():
  beta, t = 0.3, 2.0
  loss, parts = losses.clilr_loss(EVERY[0], EVERY[1:], LABELS, beta=beta, temperature=t)
  p = softmax(EVERY, t)
  others = (p.sum(0, keepdims=True) - p) / 2
  distill = t**2 * kl(others, p)  # (m, B)
  np.testing.assert_allclose(loss, np.sum(beta * ce(EVERY, LABELS) + (1 - beta) * distill,
                                          axis=0).mean(), rtol=1e-5)
  np.testing.assert_allclose(parts['loss_distill'], distill.sum(0).mean(), rtol=1e-5)
  # d/dz_i of the mean over the batch of sum_i T^2 KL(q_-i || p_i): T (p_i - q_-i) / B, with
  # the others' q held constant; a gradient into the teachers would add terms.
  grad = jax.grad(lambda z: losses.clilr_loss(z[0], z[1:], LABELS, temperature=t)[1][
      'loss_distill'])(jnp.asarray(EVERY))
  np.testing.assert_allclose(grad, t * (p - others) / 4, rtol=1e-4, atol=1e-6)


def test_byot_loss_by_hand_and_the_deepest_takes_no_gradient_from_its_students():
  deep, shallow = EVERY[0], EVERY[1:]
  features = RNG.normal(size=(2, 4, 6)).astype(np.float32)
  deep_features = RNG.normal(size=(4, 6)).astype(np.float32)
  alpha, t, gamma = 0.2, 3.0, 0.01
  loss, _ = losses.byot_loss(deep, shallow, features, deep_features, LABELS, alpha=alpha,
                             temperature=t, feature_weight=gamma)
  hint = np.sum((features - deep_features) ** 2, axis=-1)
  expected = ce(deep, LABELS) + np.sum(
      (1 - alpha) * ce(shallow, LABELS) + alpha * t**2 * kl(softmax(deep, t), softmax(shallow, t))
      + gamma * hint, axis=0)
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)

  def teaching(deep, deep_features):
    _, parts = losses.byot_loss(deep, shallow, features, deep_features, LABELS)
    return parts['loss_distill'] + parts['loss_features']
  to_deep, to_deep_features = jax.grad(teaching, argnums=(0, 1))(jnp.asarray(deep),
                                                                 jnp.asarray(deep_features))
  assert np.all(to_deep == 0.0) and np.all(to_deep_features == 0.0)


@pytest.mark.parametrize('name, branch_keys, outputs', [
    ('one', {'branches', 'gate'}, {'branches': (2, 4, 10), 'gate': (4, 3)}),
    ('clilr', {'branches'}, {'branches': (1, 4, 10)}),
    ('byot', {'shallow_classifiers'},
     {'logits': (2, 4, 10), 'features': (2, 4, 16), 'deep_features': (4, 16)}),
])
def test_the_tree_reads_like_the_method_and_ships_the_plain_model(tiny_config, name,
                                                                  branch_keys, outputs):
  tiny_config.method = name
  method = methods.create(tiny_config)
  (model, _), = method.groups
  images = jnp.asarray(batches(1, size=4)[0]['image'])
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  assert set(variables['params']) == {'backbone', 'head', *branch_keys}
  logits, branch_outputs = model.apply(variables, images, train=False)
  chex.assert_shape(logits, (4, 10))
  chex.assert_trees_all_equal_shapes(branch_outputs, jax.tree_util.tree_map(
      jnp.zeros, outputs, is_leaf=lambda x: isinstance(x, tuple)))
  if name == 'one':
    np.testing.assert_allclose(branch_outputs['gate'].sum(-1), 1.0, rtol=1e-6)
  deployed = model_lib.main_branch(variables)
  assert model_lib.count_params(deployed['params']) == plain_param_count(tiny_config)
  plain = model_lib.create_model(tiny_config, main_branch_only=True)
  plain_logits, _ = plain.apply(deployed, images, train=False)
  np.testing.assert_array_equal(plain_logits, logits)  # Branch 0 is the plain model.


def test_clilr_rescaling_divides_the_shared_stages_gradient_by_the_heads_exactly(tiny_config):
  tiny_config.update(method='clilr')
  tiny_config.clilr.num_heads = 4
  (model, _), = methods.create(tiny_config).groups
  batch = batches(1, size=4)[0]
  variables = model.init(jax.random.PRNGKey(0), batch['image'], train=False)

  def grads(scale):
    def loss(params):
      (logits, outputs), _ = model.apply({**variables, 'params': params}, batch['image'],
                                         train=True, trunk_grad_scale=scale,
                                         mutable=['batch_stats'])
      return losses.clilr_loss(logits, outputs['branches'], batch['label'])[0]
    return jax.grad(loss)(variables['params'])
  rescaled, unrescaled = grads(1 / 4), grads(1.0)
  # ResNet-8: one block a stage; stages 1 and 2 are shared, stage 3 is branch 0's own.
  shared = ['Conv_0', 'BatchNorm_0', 'BasicBlock_0', 'BasicBlock_1']
  for key in shared:
    chex.assert_trees_all_equal(rescaled['backbone'][key],
                                jax.tree_util.tree_map(lambda g: g / 4,
                                                       unrescaled['backbone'][key]))
  assert np.abs(unrescaled['backbone']['Conv_0']['kernel']).max() > 0
  # The branches' own gradients are not rescaled.
  chex.assert_trees_all_equal(rescaled['backbone']['BasicBlock_2'],
                              unrescaled['backbone']['BasicBlock_2'])
  chex.assert_trees_all_equal(rescaled['branches'], unrescaled['branches'])


def test_branched_methods_need_a_cifar_resnet(tiny_config):
  tiny_config.update(method='one', model='wrn16_4')
  with pytest.raises(ConfigError, match="^method='one' copies the last stage of a CIFAR "
                                        "ResNet; model 'wrn16_4' is not one"):
    config_checks.check_config(tiny_config, num_devices=8)
  tiny_config.method = 'byot'  # Shallow classifiers attach to any backbone's stages.
  config_checks.check_config(tiny_config, num_devices=8)


@pytest.mark.slow
@pytest.mark.parametrize('name, overrides', [  # ONE's branches are CL-ILR's, and a gate.
    ('clilr', {'clilr.num_heads': 3}),
    ('byot', {'num_runs': 2, 'runs.byot_alpha': (0.1, 0.3)}),
])
def test_eight_devices_match_one(tiny_config, name, overrides):
  tiny_config.method = name
  tiny_config.update_from_flattened_dict(overrides)
  method, _, schedule, state = setup(tiny_config)
  step_fn = every_run(train_step_lib.make_train_step(method, schedule, tiny_config), tiny_config)
  one_state, one_metrics = assert_eight_devices_match_one(step_fn, state, batches(1))
  assert all(one_metrics[0][metric].min() > 0 for metric in method.metric_names)
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), one_state.params, state.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


def test_evaluation_scores_every_branch_and_their_ensemble(tiny_config):
  for name, ensemble in (('one', 'gated'), ('clilr', 'mean')):
    tiny_config.method = name
    method = methods.create(tiny_config)
    variables = method.init_variables(jax.random.PRNGKey(0), (32, 32, 3))
    images = jnp.asarray(batches(1, size=4)[0]['image'])
    scores = method.predictions(method.evaluated(variables), images, 1.0)
    (model, _), = method.groups
    logits, outputs = model.apply(peers.peer_variables(tiny_config, variables, 0), images,
                                  train=False)
    every = np.concatenate([logits[None], outputs['branches']])  # (m, B, C)
    chex.assert_shape(scores[metrics.BRANCHES], (1, 3 if name == 'one' else 2, 4, 10))
    np.testing.assert_allclose(scores[metrics.BRANCHES][0], every, rtol=1e-6)
    np.testing.assert_allclose(scores[metrics.PEERS][0], logits, rtol=1e-6)
    expected = (np.einsum('bm,mbc->bc', outputs['gate'], every) if ensemble == 'gated'
                else np.log(softmax(every).mean(0)))
    np.testing.assert_allclose(scores[metrics.BRANCH_ENSEMBLE][0], expected, rtol=1e-5,
                               atol=1e-6)


def branch_names(result):
  """The means over runs of the branches' accuracy and loss in an evaluation's `result`."""
  return sorted(written for written, name in ((w, metrics.parse(w)) for w in result)
                if name.of_branch and name.run is None and name.metric in ('accuracy', 'loss'))


@pytest.mark.slow
@pytest.mark.parametrize('name, overrides', [
    ('one', {}),
    ('clilr', {'num_runs': 2, 'runs.clilr_beta': (0.5, 0.8)}),
    ('byot', {'num_runs': 2, 'runs.byot_alpha': (0.1, 0.3)}),
])
def test_each_neighbour_trains_resumes_exports_and_evaluates_as_the_plain_model(
    tiny_config, tmp_path, name, overrides):
  tiny_config.method = name
  tiny_config.update_from_flattened_dict(overrides)  # On 8 devices, data on the device.
  workdir, export_dir = str(tmp_path / 'run'), str(tmp_path / 'export')
  result = train.train_and_evaluate(tiny_config, workdir)
  assert result['status'] == 'trained'
  assert all(result['train'][f'{metric}'] > 0
             for metric in methods.METHODS[name].metric_names if metric != 'loss_features')
  # Resumed from step 2, step 3 ends bit for bit as the uninterrupted run's.
  resumed = str(shutil.copytree(workdir, tmp_path / 'resumed'))
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '3'))
  assert train.train_and_evaluate(tiny_config, resumed)['step'] == 3
  expected, got = saved_state(workdir, 3), saved_state(resumed, 3)
  assert expected.keys() == got.keys()
  for path in expected:
    np.testing.assert_array_equal(got[path], expected[path], err_msg=path)

  description = export.export(tiny_config, workdir, export_dir, run=tiny_config.num_runs - 1)
  assert description['num_params'] == plain_param_count(tiny_config)
  from_export = evaluate.evaluate_export(tiny_config, export_dir)
  from_checkpoint = evaluate.evaluate_workdir(tiny_config, workdir)
  run = '' if tiny_config.num_runs == 1 else f'run_{tiny_config.num_runs - 1}/'
  assert from_export['accuracy'] == from_checkpoint[f'{run}accuracy']
  assert from_export['loss'] == pytest.approx(from_checkpoint[f'{run}loss'], rel=1e-6)
  assert branch_names(from_export) == []
  if name == 'byot':
    assert branch_names(from_checkpoint) == []
  else:  # Every branch and their ensemble; branch 0 is the deployed model.
    num_branches = 3 if name == 'one' else 2
    assert branch_names(from_checkpoint) == sorted(
        metrics.name(metric, branch=j) for metric in ('accuracy', 'loss')
        for j in range(num_branches)) + ['branch_ensemble/accuracy', 'branch_ensemble/loss']
    assert from_checkpoint['branch_0/accuracy'] == from_checkpoint['accuracy']
    assert from_checkpoint['branch_0/loss'] == from_checkpoint['loss']
    validation = metrics.read(workdir, metrics.VALIDATION)[-1]
    assert validation['branch_ensemble/accuracy'] == from_checkpoint['branch_ensemble/accuracy']
