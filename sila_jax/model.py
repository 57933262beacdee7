"""The SiLa classifier: backbone, main head and Siamese heads in one parameter tree.

Parameters read `{'backbone', 'head', 'siamese_heads'}`; with no Siamese heads the model
is exactly the plain classifier `{'backbone', 'head'}`, which is what evaluation and
export use (`main_branch`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sila_jax import backbones
from sila_jax import heads

MAIN_BRANCH = ('backbone', 'head')


class SilaClassifier(nn.Module):
  """images (B, H, W, 3) -> (main logits (B, C), Siamese logits (K, B, C) or None)."""
  backbone: nn.Module
  num_classes: int
  num_siamese_heads: int = 0
  siamese_head: str = 'twin'
  attach: str = 'features'
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images, train: bool, temperature=1.0):
    """`temperature`: the attention temperature of dynamic convolutions (dy_* backbones)."""
    if getattr(self.backbone, 'dynamic', False):
      features, stages = self.backbone(images, train=train, temperature=temperature)
    else:
      features, stages = self.backbone(images, train=train)
    logits = heads.ClassifierHead(self.num_classes, name='head')(features)
    if not self.num_siamese_heads:
      return logits, None
    siamese_logits = heads.SiameseHeads(
        self.num_siamese_heads, self.num_classes, self.siamese_head, self.attach,
        self.bn_axis_name, name='siamese_heads')(features, stages, train)
    return logits, siamese_logits


def create_model(config: ml_collections.ConfigDict, *, main_branch_only: bool = False,
                 bn_axis_name: str | None = None) -> SilaClassifier:
  """The model `config` describes; `main_branch_only` drops the Siamese heads (test time)."""
  num_heads = config.sila.num_heads if config.sila.enabled else 0
  return SilaClassifier(
      backbone=backbones.create_backbone(
          config.model, width=config.width, dropout_rate=config.dropout_rate,
          bn_axis_name=bn_axis_name, num_kernels=config.dynamic.num_kernels),
      num_classes=config.num_classes,
      num_siamese_heads=0 if main_branch_only else num_heads,
      siamese_head=config.sila.head,
      attach=config.sila.attach,
      bn_axis_name=bn_axis_name)


def is_dynamic(model: str) -> bool:
  """Whether backbone `model` has dynamic convolutions, and so an attention temperature."""
  return model.startswith('dy_')


def abstract_variables(model: nn.Module, image_size: int) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `model` as jax.ShapeDtypeStruct leaves; computes nothing."""
  images = jnp.zeros((1, image_size, image_size, 3))
  return dict(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False)))


def main_branch(variables: dict[str, Any]) -> dict[str, Any]:
  """{'params': ..., 'batch_stats': ...} restricted to the backbone and main head."""
  return {collection: {k: v for k, v in tree.items() if k in MAIN_BRANCH}
          for collection, tree in variables.items()}


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter tree."""
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
