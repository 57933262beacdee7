"""Classifier heads: the main head, its Siamese twins, and the adapter for stage attachment.

Each computes in `dtype` with float32 parameters, like the backbones.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sila_jax.models import backbones

HEAD_TYPES = ('twin', 'mlp')
MAX_SIAMESE_HEADS = 64  # Each is a module of its own: start-up grows with their number.


class ClassifierHead(nn.Module):
  """Linear classifier (B, D) -> logits (B, C); `hidden` > 0 adds a ReLU hidden layer."""
  num_classes: int
  hidden: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    if self.hidden:
      features = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(features))
    return nn.Dense(self.num_classes, dtype=self.dtype)(features)


class StageAdapter(nn.Module):
  """Maps a stage's feature map (B, H, W, C) to pooled features (B, D): 1x1 conv, BN, ReLU.

  The conv runs as conv.FORMS[peer_conv] under DML's vmap, like the backbone's.
  """
  features: int
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'

  @nn.compact
  def __call__(self, x, train: bool):
    x = backbones.static_conv(self.dtype, self.peer_conv)(self.features, (1, 1))(x)
    x = nn.relu(backbones.batch_norm(train, self.bn_axis_name)()(x))
    return jnp.mean(x, axis=(1, 2))


def parse_attach(attach: str) -> int | None:
  """'features' -> None (final pooled features); 'stage<i>' -> 0-based stage index."""
  if attach == 'features':
    return None
  if attach.startswith('stage') and attach[5:].isdecimal() and int(attach[5:]) >= 1:
    return int(attach[5:]) - 1
  raise ValueError(f"sila.attach must be 'features' or 'stage<i>' (i >= 1), got {attach!r}.")


class SiameseHeads(nn.Module):
  """K heads supervised with copies of the label: -> logits (K, B, C).

  Each reads the final features (B, D) or, with `attach='stage<i>'`, stage i's map
  through its own StageAdapter. `head='twin'` copies the main head's architecture.
  """
  num_heads: int
  num_classes: int
  head: str = 'twin'
  attach: str = 'features'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'

  @nn.compact
  def __call__(self, features, stages, train: bool):
    stage = parse_attach(self.attach)
    logits = []
    for k in range(self.num_heads):
      inputs = features
      if stage is not None:
        inputs = StageAdapter(features.shape[-1], self.bn_axis_name, self.dtype, self.peer_conv,
                              name=f'adapter_{k}')(stages[stage], train)
      hidden = features.shape[-1] if self.head == 'mlp' else 0
      logits.append(ClassifierHead(self.num_classes, hidden, self.dtype,
                                   name=f'head_{k}')(inputs))
    return jnp.stack(logits)
