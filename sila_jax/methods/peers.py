"""The peer axis: the K classifiers of a run side by side, K = 1 for a single model.

Deep Mutual Learning (SILA.md, "SiLa + DML") trains K > 1 peers; a single model is the case
K = 1 of the same code, as one run is the case R = 1 of the run axis (sila_jax/training/runs.py).
Consecutive peers of the same model form a group. A group's variables (and, in the train
state, its optimizer state) are stacked along a leading peer axis and applied under
`jax.vmap`, so K homogeneous peers are one batched computation; heterogeneous peers
(`dml.models`) form one group per run of equal models. Peer trees are tuples over groups:
variables {'params': (group_0 (n_0, ...), ...), 'batch_stats': (...)}; a single model's are
({'backbone', 'head', ...} (1, ...),).
"""
import itertools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sila_jax.methods import losses
from sila_jax.models import model as model_lib
from sila_jax.training import metrics

Group = tuple[nn.Module, int]  # A model and how many peers run it.


def peer_models(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The model name of every peer: dml.models, or `model` dml.num_peers times."""
  return tuple(config.dml.models) or (config.model,) * config.dml.num_peers


def num_views(config: ml_collections.ConfigDict) -> int:
  """Augmented views of each batch: one per peer with dml.independent_augment and K > 1 (then
  the step's images are (B, K, H, W, 3)), else 1, shared by every peer."""
  num_peers = len(peer_models(config))
  return num_peers if config.dml.independent_augment and num_peers > 1 else 1


def peer_keys(rng: jax.Array, num_peers: int) -> jax.Array:
  """`rng` split into one key per peer, (K, 2); one peer keeps `rng` itself, so a single
  model initialises and drops out as it does outside the peer axis."""
  return rng[None] if num_peers == 1 else jax.random.split(rng, num_peers)


def peer_config(config: ml_collections.ConfigDict, peer: int) -> ml_collections.ConfigDict:
  """The single-model config of peer `peer`: its model, DML off."""
  single = config.copy_and_resolve_references()
  single.model = peer_models(config)[peer]
  single.dml.num_peers, single.dml.models = 1, ()
  return single


def group_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Peers per run of equal models: models (a, a, b) -> (2, 1)."""
  return tuple(len(list(run)) for _, run in itertools.groupby(peer_models(config)))


def create_groups(config: ml_collections.ConfigDict,
                  create_model: Callable[[ml_collections.ConfigDict], nn.Module]
                  ) -> tuple[Group, ...]:
  """(model, number of peers) for each run of equal models, in peer order; create_model:
  a peer's config (peer_config) -> its model."""
  groups, first = [], 0
  for size in group_sizes(config):
    groups.append((create_model(peer_config(config, first)), size))
    first += size
  return tuple(groups)


def over_peers(fn: Callable, num_peers: int, in_axes: tuple[int | None, ...]) -> Callable:
  """jax.vmap(fn, in_axes) over `num_peers` peers, outputs stacked on axis 0. One peer is fn
  applied to its slice without vmap, so a single model computes exactly as it does alone
  (vmap of one reorders XLA's reductions by an ulp)."""
  if num_peers > 1:
    return jax.vmap(fn, in_axes=in_axes)

  def one_peer_fn(*args):
    args = [arg if axis is None else jax.tree_util.tree_map(lambda x: jnp.take(x, 0, axis), arg)
            for arg, axis in zip(args, in_axes)]
    return jax.tree_util.tree_map(lambda x: x[None], fn(*args))
  return one_peer_fn


def init_variables(groups: tuple[Group, ...], rng: jax.Array,
                   image_shape: tuple[int, ...]) -> dict[str, tuple[Any, ...]]:
  """Every peer initialised from its own key (peer_keys); leaves of group g are (n_g, ...)."""
  keys = peer_keys(rng, sum(size for _, size in groups))
  images = jnp.zeros((1, *image_shape))
  params, batch_stats, first = [], [], 0
  for model, size in groups:
    variables = over_peers(lambda key, model=model: model.init(key, images, train=False),
                           size, (0,))(keys[first:first + size])
    params.append(variables['params'])
    batch_stats.append(variables['batch_stats'])
    first += size
  return {'params': tuple(params), 'batch_stats': tuple(batch_stats)}


def abstract_variables(groups: tuple[Group, ...], image_size: int) -> dict[str, tuple[Any, ...]]:
  """`init_variables`' structure as jax.ShapeDtypeStruct leaves; computes nothing."""
  return jax.eval_shape(lambda: init_variables(groups, jax.random.PRNGKey(0),
                                               (image_size, image_size, 3)))


def apply(groups: tuple[Group, ...], variables: dict[str, tuple[Any, ...]], images: jax.Array,
          *, train: bool, rng: jax.Array | None = None,
          attention_temperature: jax.Array | float = 1.0, **model_inputs: jax.Array
          ) -> tuple[jax.Array, Any, tuple[Any, ...] | None]:
  """Every peer on `images`.

  Args:
    groups: models (images, train, attention_temperature, **model_inputs) -> (logits
      (B, C), branch outputs: a pytree of arrays, or None), as methods.base.Method's.
    images: (B, H, W, 3) seen by every peer, or (B, K, H, W, 3), view k for peer k.
    rng: the dropout key, split over peers by peer_keys (training only).
    attention_temperature: the softmax temperature of dynamic convolutions' attention.
    model_inputs: the same for every peer (a method's, e.g. SiLa's backbone_grad_scale).
  Returns:
    (logits (K, B, C), branch outputs with a leading peer axis (K, ...) or None, the
    groups' new BatchNorm statistics when `train`, else None).
  """
  shared = images.ndim == 4
  keys = peer_keys(rng if rng is not None else jax.random.PRNGKey(0),
                   sum(size for _, size in groups))
  logits, branches, batch_stats, first = [], [], [], 0
  for (model, size), params, stats in zip(groups, variables['params'],
                                          variables['batch_stats']):
    def apply_one(params, stats, key, images, model=model):
      outputs = model.apply({'params': params, 'batch_stats': stats}, images, train=train,
                            attention_temperature=attention_temperature, **model_inputs,
                            rngs={'dropout': key},
                            mutable=['batch_stats'] if train else False)
      return outputs if train else (outputs, None)
    views = images if shared else images[:, first:first + size]
    (group_logits, group_branches), updates = over_peers(
        apply_one, size, (0, 0, 0, None if shared else 1))(
            params, stats, keys[first:first + size], views)
    logits.append(group_logits)
    branches.append(group_branches)
    batch_stats.append(updates['batch_stats'] if train else None)
    first += size
  branches = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *branches)
  return jnp.concatenate(logits), branches, tuple(batch_stats) if train else None


def mimicry(logits: jax.Array, temperature: float) -> dict[str, jax.Array]:
  """DML's mimicry term of each peer of logits (K, B, C), the batch's mean of
  losses.mimicry_loss: {'loss_mimicry': (K,)}; {} for a single model, with no peer to mimic."""
  if len(logits) == 1:
    return {}
  return {'loss_mimicry': jnp.mean(losses.mimicry_loss(logits, temperature), axis=1)}


def predictions(logits: jax.Array) -> dict[str, jax.Array]:
  """What evaluation scores of the peers' logits (K, B, C), as scores whose softmax is each
  prediction: {metrics.PEERS: the logits} and, with K > 1, {metrics.ENSEMBLE: (B, C)}, their
  losses.mean_prediction."""
  if len(logits) == 1:
    return {metrics.PEERS: logits}
  return {metrics.PEERS: logits, metrics.ENSEMBLE: losses.mean_prediction(logits)}


def main_branch(variables: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
  """Every group's variables restricted to {backbone, head}: what the peers deploy."""
  per_group = [model_lib.main_branch({'params': p, 'batch_stats': s})
               for p, s in zip(variables['params'], variables['batch_stats'])]
  return {collection: tuple(v[collection] for v in per_group)
          for collection in ('params', 'batch_stats')}


def one_peer(tree: Any) -> tuple[Any]:
  """A single model's tree (its params or batch_stats) in the peer layout of K = 1: one
  group, leaves (1, ...)."""
  return (jax.tree_util.tree_map(lambda x: jnp.expand_dims(x, 0), tree),)


def peer_variables(config: ml_collections.ConfigDict, variables: dict[str, tuple[Any, ...]],
                   peer: int) -> dict[str, Any]:
  """Peer `peer`'s variables, unstacked: what its model alone applies."""
  sizes = group_sizes(config)
  group = next(g for g in range(len(sizes)) if peer < sum(sizes[:g + 1]))
  index = peer - sum(sizes[:group])
  return {collection: jax.tree_util.tree_map(lambda x: x[index], tree[group])
          for collection, tree in variables.items()}
