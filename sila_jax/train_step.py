"""The per-device train step of one run, run under a `data` axis by both wrappers (and
under runs.vmap_step's vmap over runs): that of the run's K peers (sila_jax/peers.py), a
single model being K = 1.

`run` holds the run's numeric settings (runs.FIELDS: 'seed', 'sila_weight', 'learning_rate',
'rescale_backbone_grad', ...), scalars that may be traced.

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

from sila_jax import collectives
from sila_jax import losses
from sila_jax import metrics as metrics_lib
from sila_jax import optimizer as optimizer_lib
from sila_jax import peers
from sila_jax.parallel import AXIS


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step; a plain pytree (checkpointed whole)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  diverged_step: jax.Array  # int32: the step at which the run diverged; 0 while it has not.


def create_train_state(groups: tuple[peers.Group, ...], tx: optax.GradientTransformation,
                       rng: jax.Array, image_shape: tuple[int, ...]) -> TrainState:
  """Initial state for images of shape (H, W, 3): params, batch_stats and opt_state are
  tuples over peer groups whose leaves have a leading peer axis; every peer has its own
  optimizer state."""
  init_rng, rng = jax.random.split(rng)
  variables = peers.init_variables(groups, init_rng, image_shape)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'],
                    opt_state=tuple(peers.over_peers(tx.init, size, (0,))(p)
                                    for (_, size), p in zip(groups, variables['params'])),
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


def train_step(state: TrainState, batch: dict[str, jax.Array], run: dict[str, jax.Array], *,
               groups: tuple[peers.Group, ...], optimizer: Callable, learning_rate: Callable,
               loss_fn: Callable, backbone_grad_scale: Callable, mimicry_temperature: float,
               attention_temperature_schedule: optax.Schedule | None = None
               ) -> tuple[TrainState, dict[str, Any]]:
  """One SGD step of a run's K peers (K = 1: a single model) on this device's share of the
  batch, inside a `data` axis.

  Peer i minimises its own loss_fn loss plus run['dml_weight'] times its terms from
  peers.mimicry (none for one peer). The stop-gradient in those terms makes the sum of the
  peers' objectives have, for each peer, the gradient of its own objective, so one gradient
  of the sum updates every peer. Each peer's optimizer state updates under peers.over_peers.

  Args:
    state: from create_train_state.
    batch: {'image': (b, H, W, 3) for every peer or (b, K, H, W, 3) one view per peer,
      'label': (b,) int32}, b = per-device batch.
    groups: peers.create_groups' with `bn_axis_name=AXIS`, so BatchNorm statistics span all
      devices.
    optimizer: run -> the run's optax optimizer; learning_rate: (step, run) -> its rate.
    loss_fn: (logits (b, C), siamese logits (S, b, C) | None, labels (b,), run) ->
      (loss, metrics); the gradient is that of run['loss_scale'] times the objectives' sum.
    backbone_grad_scale: run -> the model's backbone_grad_scale.
    mimicry_temperature: the softmax temperature of the mimicry terms.
    attention_temperature_schedule: step -> attention temperature, for dynamic-convolution
      models; it is computed here from the step, so a resumed run continues the annealing
      exactly.
  Returns:
    The new state (identical on every device) and metrics averaged over devices: `loss`
    (the objective) and the loss_fn parts averaged over peers, the mimicry terms, `accuracy`
    (peer 0's), and under metrics.PEERS each peer's `loss`, `loss_main` and `accuracy`, (K,).
  """
  attention_temperature = (1.0 if attention_temperature_schedule is None
                           else attention_temperature_schedule(state.step))

  def loss_and_aux(params):
    logits, siamese_logits, batch_stats = peers.apply(
        groups, {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
        train=True, rng=_dropout_rng(state), attention_temperature=attention_temperature,
        backbone_grad_scale=backbone_grad_scale(run))
    peer_losses, peer_metrics = peers.over_peers(loss_fn, len(logits), (0, 0, None, None))(
        logits, siamese_logits, batch['label'], run)
    terms = peers.mimicry(logits, mimicry_temperature)
    objectives = sum((run['dml_weight'] * term for term in terms.values()), start=peer_losses)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'], axis=1)
    metrics = {name: jnp.mean(value) for name, value in {**peer_metrics, **terms}.items()}
    metrics.update(loss=jnp.mean(objectives), accuracy=accuracy[0], **{metrics_lib.PEERS: {
        'loss': objectives, 'loss_main': peer_metrics['loss_main'], 'accuracy': accuracy}})
    return run['loss_scale'] * jnp.sum(objectives), (metrics, batch_stats)

  grads, (metrics, batch_stats) = jax.grad(loss_and_aux, has_aux=True)(state.params)
  grads, metrics = collectives.device_mean((grads, metrics), AXIS)
  metrics['learning_rate'] = learning_rate(state.step, run)
  if attention_temperature_schedule is not None:
    metrics['attention_temperature'] = attention_temperature
  tx = optimizer(run)
  params, opt_state = [], []
  for (_, size), group_grads, group_opt_state, group_params in zip(
      groups, grads, state.opt_state, state.params):
    updates, new_opt_state = peers.over_peers(tx.update, size, (0, 0, 0))(
        group_grads, group_opt_state, group_params)
    params.append(optax.apply_updates(group_params, updates))
    opt_state.append(new_opt_state)
  return _finish(state, grads, tuple(params), batch_stats, tuple(opt_state), metrics)


def _loss_fn(config) -> Callable:
  """sila_loss with `config`'s loss structure and the run's weights and smoothing."""
  def loss_fn(logits, siamese_logits, labels, run):
    return losses.sila_loss(logits, siamese_logits, labels, variant=config.sila.variant,
                            weight=run['sila_weight'], kl_weight=run['sila_kl_weight'],
                            temperature=config.sila.temperature,
                            label_smoothing=run['label_smoothing'])
  return loss_fn


def _run_settings(config, schedule: optax.Schedule) -> dict[str, Callable]:
  """What the step reads of a run beyond its losses: its optimizer, its learning rate by step
  and its backbone gradient scale, 1 / (1 + lambda * num_heads) with rescaling on, else 1."""
  return {
      'optimizer': lambda run: optimizer_lib.create_optimizer(
          config, schedule, run['learning_rate'], run['weight_decay']),
      'learning_rate': lambda step, run: optimizer_lib.scaled_schedule(
          config, schedule, run['learning_rate'])(step),
      'backbone_grad_scale': lambda run: 1.0 / (
          1.0 + run['rescale_backbone_grad'] * run['sila_weight'] * config.sila.num_heads),
      'loss_fn': _loss_fn(config)}


def make_train_step(groups: tuple[peers.Group, ...], schedule: optax.Schedule, config,
                    attention_temperature_schedule: optax.Schedule | None = None) -> Callable:
  """`train_step` bound to peer groups, the config's learning-rate schedule (each run scales
  it to its own peak), the attention-temperature schedule and the loss settings of `config`."""
  return functools.partial(train_step, groups=groups, **_run_settings(config, schedule),
                           mimicry_temperature=config.dml.temperature,
                           attention_temperature_schedule=attention_temperature_schedule)
