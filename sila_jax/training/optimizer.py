"""SGD with momentum / Nesterov, weight decay on kernels only; learning-rate and
attention-temperature schedules."""
import jax
import ml_collections
import optax

def _cosine_decay(opt: ml_collections.ConfigDict, num_train_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  return optax.cosine_decay_schedule(opt.learning_rate, max(num_train_steps - warmup_steps, 1))


def _step_decay(opt: ml_collections.ConfigDict, num_train_steps: int,
                warmup_steps: int) -> optax.Schedule:
  boundaries = {int(b * num_train_steps) - warmup_steps: opt.lr_decay_factor
                for b in opt.lr_boundaries}
  return optax.piecewise_constant_schedule(opt.learning_rate, boundaries)


# optimizer.schedule -> (optimizer config, steps, warm-up steps) -> the rate after warm-up.
DECAYS = {'cosine': _cosine_decay, 'step': _step_decay}
SCHEDULES = tuple(DECAYS)


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up over `warmup_epochs`, then cosine decay to 0 or step decay.

  Step decay multiplies the rate by `lr_decay_factor` at each of `lr_boundaries`,
  given as fractions of the whole run.
  """
  opt = config.optimizer
  warmup_steps = min(int(opt.warmup_epochs * steps_per_epoch), num_train_steps)
  warmup = optax.linear_schedule(0.0, opt.learning_rate, warmup_steps)
  decay = DECAYS[opt.schedule](opt, num_train_steps, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def attention_temperature_schedule(config: ml_collections.ConfigDict,
                                   steps_per_epoch: int) -> optax.Schedule:
  """Dynamic convolution's attention temperature: tau_start, linearly down to 1 over tau_epochs."""
  steps = round(config.dynamic.tau_epochs * steps_per_epoch)
  if steps < 1:
    return optax.constant_schedule(1.0)
  return optax.linear_schedule(config.dynamic.tau_start, 1.0, steps)


def is_kernel(params) -> dict:
  """Mask tree: True for convolution and dense kernels, False for biases and BN scales."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def scaled_schedule(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                    learning_rate: jax.Array | float | None) -> optax.Schedule:
  """`schedule` (the config's) scaled to peak at `learning_rate` (None: unchanged). At the
  config's own rate the scale is exactly 1, so the rates are unchanged bit for bit."""
  if learning_rate is None:
    return schedule
  scale = learning_rate / config.optimizer.learning_rate
  return lambda step: schedule(step) * scale


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     learning_rate: jax.Array | float | None = None,
                     weight_decay: jax.Array | float | None = None
                     ) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum; L2 weight decay added to kernel gradients only.

  `learning_rate` and `weight_decay` (scalars, possibly traced: one run's own,
  sila_jax/training/runs.py) replace the config's; the schedule keeps its shape (`scaled_schedule`).
  """
  opt = config.optimizer
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay if weight_decay is None else weight_decay,
                                mask=is_kernel),
      optax.sgd(scaled_schedule(config, schedule, learning_rate),
                momentum=opt.momentum or None, nesterov=opt.nesterov))
