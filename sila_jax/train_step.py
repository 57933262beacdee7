"""The per-device train step: one function, run under a `data` axis by both wrappers."""
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from sila_jax import losses
from sila_jax.model import SilaClassifier

AXIS = 'data'


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step; a plain pytree (checkpointed whole)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(model: SilaClassifier, tx: optax.GradientTransformation,
                       rng: jax.Array, image_shape: tuple[int, ...]) -> TrainState:
  """Initial state for images of shape (H, W, 3)."""
  init_rng, rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape)), train=False)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(variables['params']), rng=rng)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: SilaClassifier,
               tx: optax.GradientTransformation, loss_fn: Callable, schedule: optax.Schedule,
               temperature_schedule: optax.Schedule | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's share of the batch, inside a `data` axis.

  Args:
    batch: {'image': (b, H, W, 3) float32, 'label': (b,) int32}, b = per-device batch.
    model: built with `bn_axis_name=AXIS` so BatchNorm statistics span all devices.
    loss_fn: (logits (b, C), siamese logits (K, b, C) | None, labels (b,)) -> (loss, metrics).
    temperature_schedule: step -> attention temperature, for dynamic-convolution models; it
      is computed here from the step, so a resumed run continues the annealing exactly.
  Returns:
    The new state (identical on every device) and metrics averaged over devices.
  """
  dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                   jax.lax.axis_index(AXIS))

  extra = {}
  if temperature_schedule is not None:
    extra['temperature'] = temperature_schedule(state.step)

  def loss_and_aux(params):
    (logits, siamese_logits), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_rng}, **extra)
    loss, metrics = loss_fn(logits, siamese_logits, batch['label'])
    metrics['accuracy'] = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return loss, (metrics, updates['batch_stats'])

  grads, (metrics, batch_stats) = jax.grad(loss_and_aux, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = jax.lax.pmean(metrics, AXIS)
  metrics['learning_rate'] = schedule(state.step)
  if temperature_schedule is not None:
    metrics['attention_temperature'] = extra['temperature']
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def make_train_step(model: SilaClassifier, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config,
                    temperature_schedule: optax.Schedule | None = None) -> Callable:
  """`train_step` bound to a model, optimizer, schedules and the loss settings of `config`."""
  loss_fn = functools.partial(
      losses.sila_loss, variant=config.sila.variant, weight=config.sila.weight,
      kl_weight=config.sila.kl_weight, temperature=config.sila.temperature,
      label_smoothing=config.label_smoothing)
  return functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn, schedule=schedule,
                           temperature_schedule=temperature_schedule)
