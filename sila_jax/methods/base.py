"""The method interface, and the one path that trains, evaluates and deploys every method.

A method trains each peer of a run (sila_jax/methods/peers.py: K peers, K = 1 a single
model; DML when K > 1) as one classifier: the deployable {backbone, head} and the branches
the method adds beside it, which test time drops. A subclass says what differs between
methods through the hooks below; everything else here is shared, so the train step,
evaluation, checkpoints and exports take one path for all methods and never ask which one
they run.

Hooks (a subclass overrides the first three):
  create_model(config, bn_axis_name): one peer's training model, a Flax module
    (images (B, H, W, 3), train, attention_temperature, **model_inputs(settings)) -> (main
    logits (B, C), branch outputs: a pytree of (..., B, C) arrays, or None), whose
    parameters hold the plain classifier's {'backbone', 'head'} and the branches under other
    keys.
  model_inputs(settings): what that module reads of the run's settings (runs.FIELDS, traced
    scalars) beyond the images.
  loss(logits, branches, labels, settings): one peer's loss and its parts ({'loss',
    'loss_main', *metric_names}), from the method's config fields and the run's settings.
  structure_fields, choices, rules, problems(config): the config fields that fix the
    method's parameter tree (a checkpoint must match them), and its config checks.
  predictions, evaluated, evaluated_abstract: what evaluation scores, when a method scores
    more than the deployable models (sila_jax/methods/branched.py).
"""
import abc
from typing import Any, Callable, ClassVar, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sila_jax.methods import peers
from sila_jax.models import model as model_lib
from sila_jax.training import metrics as metrics_lib
from sila_jax.training import optimizer as optimizer_lib
from sila_jax.training import runs

Rule = tuple[Callable[[Any], bool], str]  # (what a valid value passes, what it must be).


class Method(abc.ABC):
  """A training method for `config`'s peers.

  bn_axis_name: the mesh axis BatchNorm statistics span in training (parallel.AXIS).
  steps_per_epoch: with dynamic-convolution models, anneals their attention temperature
    (optimizer.attention_temperature_schedule); None holds it at 1.
  """
  structure_fields: ClassVar[tuple[str, ...]] = ()
  metric_names: ClassVar[tuple[str, ...]] = ()
  choices: ClassVar[dict[str, Iterable[str]]] = {}  # Field -> its allowed values.
  rules: ClassVar[dict[str, Rule]] = {}

  def __init__(self, config: ml_collections.ConfigDict, *, bn_axis_name: str | None = None,
               steps_per_epoch: int | None = None):
    self.config = config
    self.groups = peers.create_groups(
        config, lambda peer: self.create_model(peer, bn_axis_name))
    self.deployable_groups = peers.create_groups(
        config, lambda peer: model_lib.create_model(peer, main_branch_only=True))
    dynamic = any(map(model_lib.is_dynamic, peers.peer_models(config)))
    self.attention_schedule = (
        optimizer_lib.attention_temperature_schedule(config, steps_per_epoch)
        if dynamic and steps_per_epoch is not None else None)

  # The hooks.

  @abc.abstractmethod
  def create_model(self, config: ml_collections.ConfigDict,
                   bn_axis_name: str | None) -> nn.Module:
    """One peer's training model for its config (peers.peer_config)."""

  def model_inputs(self, settings: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The training model's inputs beyond the images, from the run's settings."""
    return {}

  @abc.abstractmethod
  def loss(self, logits: jax.Array, branches: Any, labels: jax.Array,
           settings: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One peer's loss and its parts, from its logits (B, C), branch outputs and labels."""

  @classmethod
  def problems(cls, config: ml_collections.ConfigDict) -> Iterator[str]:
    """What is wrong with `config`'s settings of this method, beyond `choices` and `rules`."""
    return iter(())

  # The one path.

  def init_variables(self, rng: jax.Array, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """Every peer's training variables (peers.init_variables) for images (H, W, 3)."""
    return peers.init_variables(self.groups, rng, image_shape)

  def attention_temperature(self, step: jax.Array | int) -> jax.Array | float:
    """Dynamic convolutions' attention temperature at `step` (1 without annealing)."""
    return 1.0 if self.attention_schedule is None else self.attention_schedule(step)

  def objectives(self, variables: dict[str, Any], batch: dict[str, jax.Array], *,
                 step: jax.Array, settings: dict[str, jax.Array], rng: jax.Array
                 ) -> tuple[jax.Array, dict[str, Any], tuple[Any, ...]]:
    """Every peer's training objective on `batch` and the new BatchNorm statistics.

    Peer i's objective is its own `loss` plus settings['dml_weight'] times its terms from
    peers.mimicry (none for one peer). The stop-gradient in those terms makes the sum of
    the objectives have, for each peer, the gradient of its own objective.

    Args:
      variables: {'params', 'batch_stats'} in the layout of `init_variables`.
      batch: {'image': (b, H, W, 3) for every peer or (b, K, H, W, 3) one view per peer,
        'label': (b,) int32}.
      step: the state's step; settings: the run's (runs.FIELDS); rng: the dropout key.
    Returns:
      (objectives (K,), metrics, batch_stats): metrics are `loss` (the objective) and the
      loss parts averaged over peers, the mimicry terms, `accuracy` (peer 0's), under
      metrics.PEERS each peer's `loss`, `loss_main` and `accuracy` (K,).
    """
    attention_temperature = self.attention_temperature(step)
    logits, branches, batch_stats = peers.apply(
        self.groups, variables, batch['image'], train=True, rng=rng,
        attention_temperature=attention_temperature, **self.model_inputs(settings))
    peer_losses, peer_metrics = peers.over_peers(self.loss, len(logits), (0, 0, None, None))(
        logits, branches, batch['label'], settings)
    terms = peers.mimicry(logits, self.config.dml.temperature)
    objectives = sum((settings['dml_weight'] * term for term in terms.values()),
                     start=peer_losses)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'], axis=1)
    metrics = {name: jnp.mean(value) for name, value in {**peer_metrics, **terms}.items()}
    metrics.update(loss=jnp.mean(objectives), accuracy=accuracy[0], **{metrics_lib.PEERS: {
        'loss': objectives, 'loss_main': peer_metrics['loss_main'], 'accuracy': accuracy}})
    return objectives, metrics, batch_stats

  def schedule_metrics(self, step: jax.Array) -> dict[str, jax.Array]:
    """What the step reports of the method's schedules at `step`, the same on every device:
    with annealing, {'attention_temperature'}."""
    if self.attention_schedule is None:
      return {}
    return {'attention_temperature': self.attention_schedule(step)}

  def predictions(self, variables: dict[str, Any], images: jax.Array,
                  attention_temperature: jax.Array | float) -> dict[str, jax.Array]:
    """What evaluation scores of the models (variables: `evaluated`'s) on images
    (B, H, W, 3): peers.predictions, each peer's and, with K > 1, the ensemble's."""
    logits, _, _ = peers.apply(self.deployable_groups, variables, images, train=False,
                               attention_temperature=attention_temperature)
    return peers.predictions(logits)

  def evaluated(self, variables: dict[str, Any]) -> dict[str, Any]:
    """What evaluation reads of every peer's training variables: `deployable`'s, unless the
    method's `predictions` score its branches too."""
    return self.deployable(variables)

  def evaluated_abstract(self) -> dict[str, Any]:
    """`evaluated`'s structure, as `deployable_abstract`: what evaluation reads of a
    checkpoint."""
    return self.deployable_abstract()

  def deployable(self, variables: dict[str, Any]) -> dict[str, Any]:
    """What every peer deploys of its training variables: the plain classifier, the
    {backbone, head} subtree; the method's branches are left out."""
    return peers.main_branch(variables)

  def deployable_abstract(self) -> dict[str, Any]:
    """`deployable`'s structure for every run, jax.ShapeDtypeStruct leaves (R, n_g, ...):
    what export reads of a checkpoint; computes nothing."""
    return self.abstract_variables(self.deployable_groups)

  def abstract_variables(self, groups: tuple[peers.Group, ...]) -> dict[str, Any]:
    """The variables of `groups` (self.groups or self.deployable_groups) for every run, as
    jax.ShapeDtypeStruct leaves (R, n_g, ...)."""
    return runs.stack_abstract(peers.abstract_variables(groups, self.config.image_size),
                               self.config.num_runs)
