"""The per-device step: a single model (one peer) trains bit for bit as the single-model step
did, and 1 vs 8 devices agree under both wrappers."""
import chex
import jax
import numpy as np
import optax
import pytest

from sila_jax.training import collectives
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import parallel as parallel_lib
from sila_jax.training import train_step as train_step_lib
from tests.helpers import AXIS, batches, every_run, run, setup


def single_model_step(method, schedule, config):
  """The per-run step of one model with no peer axis and no vmap, from the method's hooks:
  the single-model step this project had before a single model became one peer, which K = 1
  must train bit for bit."""
  (model, _), = method.groups

  def step(state, batch, settings):
    dropout_rng = train_step_lib._dropout_rng(state)

    def loss_and_aux(params):
      (logits, siamese_logits), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
          mutable=['batch_stats'], rngs={'dropout': dropout_rng}, **method.model_inputs(settings))
      loss, metrics = method.loss(logits, siamese_logits, batch['label'], settings)
      return settings['loss_scale'] * loss, (metrics, updates['batch_stats'])
    grads, (metrics, batch_stats) = jax.grad(loss_and_aux, has_aux=True)(state.params)
    grads, metrics = collectives.device_mean((grads, metrics), AXIS)
    tx = optimizer_lib.create_optimizer(config, schedule, settings['learning_rate'],
                                        settings['weight_decay'])
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return train_step_lib._finish(state, grads, optax.apply_updates(state.params, updates),
                                  batch_stats, opt_state, metrics)
  return step


def only_peer(tree):
  """The peer-layout tree of one peer, leaves (R, 1, ...), as a single model's, (R, ...)."""
  (group,) = tree
  return jax.tree_util.tree_map(lambda x: x[:, 0], group)


@pytest.mark.slow
@pytest.mark.parametrize('sila', [False, True])
def test_one_peer_trains_bit_for_bit_like_the_single_model_step(tiny_config, sila):
  tiny_config.sila.update(enabled=sila, num_heads=2, kl_weight=0.5)
  method, _, schedule, state = setup(tiny_config)
  assert len(method.groups) == 1 and method.groups[0][1] == 1
  alone = state.replace(**{field: only_peer(getattr(state, field))
                           for field in ('params', 'batch_stats', 'opt_state')})
  assert set(alone.params) == {'backbone', 'head', *(['siamese_heads'] if sila else [])}
  devices = jax.devices()[:1]
  ours = parallel_lib.ShardMapParallel(every_run(
      train_step_lib.make_train_step(method, schedule, tiny_config), tiny_config), devices)
  reference = parallel_lib.ShardMapParallel(
      every_run(single_model_step(method, schedule, tiny_config), tiny_config), devices)
  data = batches(2)
  ours_state, ours_metrics = run(ours, state, data)
  ref_state, ref_metrics = run(reference, alone, data)
  for field in ('params', 'batch_stats', 'opt_state'):
    chex.assert_trees_all_equal(only_peer(getattr(ours_state, field)), getattr(ref_state, field))
  assert [m['loss'] for m in ours_metrics] == [m['loss'] for m in ref_metrics]
  # The steps moved the parameters, so the equality above means something.
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), ref_state.params,
                                 alone.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


def two_head_step(config):
  """(initial state, step of every run) of SiLa with two Siamese heads at stage 2 and the
  consistency term: the program the tests below compile, on 1 and on 8 devices under each
  wrapper (the session's compilation cache compiles each once)."""
  config.sila.update(num_heads=2, attach='stage2', kl_weight=0.5)
  method, _, schedule, state = setup(config)
  return state, every_run(train_step_lib.make_train_step(method, schedule, config), config)


# One worker runs them, so that later ones find the programs of earlier ones in the cache.
SHARES_THE_STEP = pytest.mark.xdist_group('test_train_step.two_head_step')


@pytest.mark.slow
@SHARES_THE_STEP
@pytest.mark.parametrize('kind', parallel_lib.KINDS)
def test_eight_devices_match_one_over_two_steps(tiny_config, kind):
  start, step_fn = two_head_step(tiny_config)
  data = batches(2)
  one_state, one_metrics = run(parallel_lib.create_parallel(kind, step_fn, jax.devices()[:1]),
                               start, data)
  eight_state, eight_metrics = run(
      parallel_lib.create_parallel(kind, step_fn, jax.devices()[:8]), start, data)
  assert int(eight_state.step) == 2
  chex.assert_trees_all_close(eight_state, one_state, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(eight_metrics, one_metrics, rtol=1e-4, atol=1e-5)  # Both steps.
  # The steps really moved the parameters, so the agreement above means something.
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), one_state.params, start.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


@pytest.mark.slow
@SHARES_THE_STEP
def test_shard_map_and_pmap_agree(tiny_config):
  state, step_fn = two_head_step(tiny_config)
  data = batches(1)
  shard_state, _ = run(parallel_lib.ShardMapParallel(step_fn, jax.devices()[:8]), state, data)
  pmap_state, _ = run(parallel_lib.PmapParallel(step_fn, jax.devices()[:8]), state, data)
  chex.assert_trees_all_close(shard_state, pmap_state, rtol=1e-5, atol=1e-6)


def test_weight_decay_touches_kernels_only(tiny_config):
  _, _, _, state = setup(tiny_config)
  (mask,) = optimizer_lib.is_kernel(state.params)
  assert mask['head']['Dense_0']['kernel'] and not mask['head']['Dense_0']['bias']
  bn = mask['backbone']['BatchNorm_0']
  assert not bn['scale'] and not bn['bias']


@pytest.mark.parametrize('schedule', optimizer_lib.SCHEDULES)
def test_schedules_warm_up_then_decay(tiny_config, schedule):
  tiny_config.optimizer.update(schedule=schedule, warmup_epochs=2.0, learning_rate=0.4)
  lr = optimizer_lib.learning_rate_schedule(tiny_config, num_train_steps=100, steps_per_epoch=10)
  np.testing.assert_allclose([lr(0), lr(10), lr(20)], [0.0, 0.2, 0.4], rtol=1e-6)
  assert lr(99) < 0.01
  if schedule == 'step':
    np.testing.assert_allclose([lr(49), lr(51), lr(76)], [0.4, 0.04, 0.004], rtol=1e-5)


@pytest.mark.slow
def test_rescaled_twin_sila_with_agreeing_heads_steps_the_backbone_like_plain_training(
    tiny_config):
  # With the Siamese head a copy of the main head, twin SiLa (lambda = 1) sends the backbone
  # twice the plain gradient; rescaling halves it back. Doubling and halving are exact in
  # floating point, so one step must match plain training bit for bit.
  tiny_config.sila.update(attach='features', weight=1.0, rescale_backbone_grad=True)
  method, _, schedule, state = setup(tiny_config)
  (params,) = state.params
  state = state.replace(params=({**params, 'siamese_heads': {'head_0': params['head']}},))
  unrescaled_config = tiny_config.copy_and_resolve_references()
  unrescaled_config.sila.rescale_backbone_grad = False
  plain_config = tiny_config.copy_and_resolve_references()
  plain_config.sila.enabled = False
  plain_method, _, _, plain_state = setup(plain_config)
  plain_state = plain_state.replace(
      params=({k: params[k] for k in ('backbone', 'head')},), batch_stats=state.batch_stats)
  devices = jax.devices()[:1]
  data = batches(1)

  def one_step(step_method, config, start):
    step_fn = every_run(train_step_lib.make_train_step(step_method, schedule, config), config)
    return run(parallel_lib.ShardMapParallel(step_fn, devices), start, data)[0]
  rescaled_state = one_step(method, tiny_config, state)
  plain_state = one_step(plain_method, plain_config, plain_state)
  chex.assert_trees_all_equal(rescaled_state.batch_stats, plain_state.batch_stats)
  (rescaled,), (plain,) = rescaled_state.params, plain_state.params
  (unrescaled,) = one_step(method, unrescaled_config, state).params
  chex.assert_trees_all_equal(rescaled['backbone'], plain['backbone'])
  # The heads' own gradients are not rescaled. (The main head's matches plain training's to
  # rounding: its loss sums with the Siamese head's before the batch mean.)
  chex.assert_trees_all_equal(rescaled['head'], unrescaled['head'])
  chex.assert_trees_all_close(rescaled['head'], plain['head'], rtol=1e-6)
  chex.assert_trees_all_equal(rescaled['siamese_heads'], unrescaled['siamese_heads'])
  # Without rescaling the backbone takes the larger step, so the equality above is a test.
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), unrescaled['backbone'],
                                 plain['backbone'])
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-4
