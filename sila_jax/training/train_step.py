"""The per-device train step of one run, run under a `data` axis by both wrappers (and
under runs.vmap_step's vmap over runs): that of the run's K peers
(sila_jax/methods/peers.py), a single model being K = 1.

What it trains is the method's (sila_jax/methods/): the step asks nothing of it but its
peers' objectives. `settings` holds the run's numeric settings (runs.FIELDS: 'seed',
'sila_weight', 'learning_rate', 'rescale_backbone_grad', ...), scalars that may be traced.

A run diverges at the first step whose loss, new parameters or new BatchNorm statistics are
not finite: from then on it stops updating (its state stays at its last finite values) and
`diverged_step` records that step, so the other runs of its computation carry on.
"""
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from sila_jax import methods
from sila_jax.methods import peers
from sila_jax.training import collectives
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training.parallel import AXIS


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step; a plain pytree (checkpointed whole)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  diverged_step: jax.Array  # int32: the step at which the run diverged; 0 while it has not.


def create_train_state(method: methods.Method, tx: optax.GradientTransformation,
                       rng: jax.Array, image_shape: tuple[int, ...]) -> TrainState:
  """Initial state for images of shape (H, W, 3): params, batch_stats and opt_state are
  tuples over peer groups whose leaves have a leading peer axis; every peer has its own
  optimizer state."""
  init_rng, rng = jax.random.split(rng)
  variables = method.init_variables(init_rng, image_shape)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'],
                    opt_state=tuple(peers.over_peers(tx.init, size, (0,))(p)
                                    for (_, size), p in zip(method.groups, variables['params'])),
                    rng=rng, diverged_step=jnp.zeros((), jnp.int32))


def _dropout_rng(state: TrainState) -> jax.Array:
  """A fresh key per step and device."""
  return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))


def _all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every element of every array in `tree` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _finish(state: TrainState, grads: Any, params: Any, batch_stats: Any, opt_state: Any,
            metrics: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """The next state: the update applied unless the run has diverged, at this step or before.
  `metrics` gain the global L2 norms of `grads` (averaged over devices, before weight decay)
  and of the next state's parameters, 'grad_norm' and 'param_norm'.

  Everything it reads is the same on every device, so every device decides alike.
  """
  finite = _all_finite((metrics['loss'], params, batch_stats))
  live = (state.diverged_step == 0) & finite
  keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
      lambda n, o: jnp.where(live, n, o), new, old)
  diverged_step = jnp.where((state.diverged_step == 0) & ~finite, state.step + 1,
                            state.diverged_step)
  metrics['diverged_step'] = diverged_step
  state = state.replace(step=state.step + 1, params=keep(params, state.params),
                        batch_stats=keep(batch_stats, state.batch_stats),
                        opt_state=keep(opt_state, state.opt_state), diverged_step=diverged_step)
  metrics.update(grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(state.params))
  return state, metrics


def train_step(state: TrainState, batch: dict[str, jax.Array], settings: dict[str, jax.Array], *,
               method: methods.Method, optimizer: Callable, learning_rate: Callable
               ) -> tuple[TrainState, dict[str, Any]]:
  """One SGD step of a run's K peers (K = 1: a single model) on this device's share of the
  batch, inside a `data` axis, whatever the method.

  One gradient of settings['loss_scale'] times the sum of the peers' objectives
  (method.objectives) updates every peer; each peer's optimizer state updates under
  peers.over_peers.

  Args:
    state: from create_train_state.
    batch: {'image': (b, H, W, 3) for every peer or (b, K, H, W, 3) one view per peer,
      'label': (b,) int32}, b = per-device batch.
    method: built with `bn_axis_name=AXIS`, so BatchNorm statistics span all devices.
    optimizer: settings -> the run's optax optimizer; learning_rate: (step, settings) -> its
      rate.
  Returns:
    The new state (identical on every device) and method.objectives' metrics averaged over
    devices, with `learning_rate` and method.schedule_metrics.
  """
  def loss_and_aux(params):
    objectives, metrics, batch_stats = method.objectives(
        {'params': params, 'batch_stats': state.batch_stats}, batch, step=state.step,
        settings=settings, rng=_dropout_rng(state))
    return settings['loss_scale'] * jnp.sum(objectives), (metrics, batch_stats)

  grads, (metrics, batch_stats) = jax.grad(loss_and_aux, has_aux=True)(state.params)
  grads, metrics = collectives.device_mean((grads, metrics), AXIS)
  metrics.update(learning_rate=learning_rate(state.step, settings),
                 **method.schedule_metrics(state.step))
  tx = optimizer(settings)
  params, opt_state = [], []
  for (_, size), group_grads, group_opt_state, group_params in zip(
      method.groups, grads, state.opt_state, state.params):
    updates, new_opt_state = peers.over_peers(tx.update, size, (0, 0, 0))(
        group_grads, group_opt_state, group_params)
    params.append(optax.apply_updates(group_params, updates))
    opt_state.append(new_opt_state)
  return _finish(state, grads, tuple(params), batch_stats, tuple(opt_state), metrics)


def make_train_step(method: methods.Method, schedule: optax.Schedule, config) -> Callable:
  """`train_step` bound to `method` and to each run's optimizer and learning rate: the
  config's schedule scaled to the run's peak, with the run's weight decay."""
  return functools.partial(
      train_step, method=method,
      optimizer=lambda settings: optimizer_lib.create_optimizer(
          config, schedule, settings['learning_rate'], settings['weight_decay']),
      learning_rate=lambda step, settings: optimizer_lib.scaled_schedule(
          config, schedule, settings['learning_rate'])(step))
