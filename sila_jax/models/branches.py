"""Classifiers with branches beside the plain one, for SiLa's neighbours (sila_jax/methods/):
extra copies of a CIFAR ResNet's last stage on its shared lower stages (ONE, CL-ILR), and a
shallow classifier after every stage but the last (BYOT).

Each keeps the plain classifier's {'backbone', 'head'} as it is (the deployable branch) and
puts the rest under keys of its own; like every model here it returns (main logits (B, C),
branch outputs), float32, whatever `dtype` it computes in.
"""
import dataclasses
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from sila_jax.models import backbones
from sila_jax.models.heads import ClassifierHead

MAX_BRANCHES = 8  # Each is a copy of the last stage: start-up grows with their number.
# The backbones BranchedClassifier takes: the CIFAR ResNets, static and dynamic.
BRANCHED_BACKBONES = tuple(name for name in backbones.BACKBONES
                           if name.removeprefix('dy_').startswith('resnet')
                           and name.removeprefix('dy_') != 'resnet18')
# The fields of a CifarResNet, which its LastStage copies share.
STAGE_FIELDS = tuple(f.name for f in dataclasses.fields(backbones.CifarResNet)
                     if f.name not in ('parent', 'name'))


def backbone_problems(names: tuple[str, ...], method: str) -> Iterator[str]:
  """What is wrong with training method `method`'s BranchedClassifier on backbones `names`."""
  for name in dict.fromkeys(names):
    if name in backbones.BACKBONES and name not in BRANCHED_BACKBONES:
      yield (f"method={method!r} copies the last stage of a CIFAR ResNet; model {name!r} is "
             f"not one (choose one of {', '.join(BRANCHED_BACKBONES)}).")


class LastStage(backbones.CifarResNet):
  """A copy of a CIFAR ResNet's last stage (its blocks, as CifarResNet builds them) and
  pooling: the shared stages' output (B, H, W, C) -> features (B, D). The fields are the
  backbone's."""

  @nn.compact
  def __call__(self, x, train: bool, attention_temperature=1.0):
    conv, dynamic = backbones.resnet_convs(self)
    x = backbones.residual_stage(x, (self.depth - 2) // 6,
                                 backbones.scaled(backbones.CIFAR_STAGES[-1], self.width), 2,
                                 backbones.batch_norm(train, self.bn_axis_name), conv, dynamic,
                                 attention_temperature)
    return jnp.mean(x, axis=(1, 2))


class BranchedClassifier(nn.Module):
  """A CIFAR ResNet (`backbone`, a backbones.CifarResNet) and its head as branch 0, and
  `num_branches - 1` more branches under 'branches' (Branches: 'stage_<i>', a LastStage
  copy, and 'head_<i>') on the output of the shared lower stages; with `gate`, ONE's gate
  under 'gate' (pooled shared features -> linear -> softmax over the branches).

  images (B, H, W, 3) -> (logits (B, C), {'branches': (m - 1, B, C)} and, with the gate,
  'gate': (B, m)). `trunk_grad_scale` multiplies the gradient every branch sends back into
  the shared stages (backpropagation rescaling; 1 leaves it as it is).
  """
  backbone: nn.Module
  num_classes: int
  num_branches: int
  gate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool, attention_temperature=1.0, trunk_grad_scale=1.0):
    shared_stage = len(backbones.CIFAR_STAGES) - 2
    features, stages = self.backbone(images, train=train,
                                     attention_temperature=attention_temperature,
                                     split=(shared_stage, trunk_grad_scale))
    logits = ClassifierHead(self.num_classes, dtype=self.dtype, name='head')(features)
    shared = stages[shared_stage]
    stage = tuple((field, getattr(self.backbone, field)) for field in STAGE_FIELDS)
    outputs = {'branches': Branches(self.num_branches - 1, self.num_classes, stage,
                                    name='branches')(shared, train, attention_temperature)}
    if self.gate:
      pooled = jnp.mean(shared, axis=(1, 2))
      outputs['gate'] = jax.nn.softmax(
          nn.Dense(self.num_branches, dtype=self.dtype, name='gate')(pooled).astype(jnp.float32))
    return logits.astype(jnp.float32), outputs


class Branches(nn.Module):
  """`num_branches` branches, 1, 2, ...: a LastStage ('stage_<i>') and a head ('head_<i>'):
  shared stages' output -> logits (num_branches, B, C). `stage`: the backbone's
  (STAGE_FIELDS name, value) pairs."""
  num_branches: int
  num_classes: int
  stage: tuple[tuple[str, Any], ...]

  @nn.compact
  def __call__(self, shared, train: bool, attention_temperature=1.0):
    stage = dict(self.stage)
    logits = []
    for i in range(1, self.num_branches + 1):
      features = LastStage(**stage, name=f'stage_{i}')(shared, train, attention_temperature)
      logits.append(ClassifierHead(self.num_classes, dtype=stage['dtype'],
                                   name=f'head_{i}')(features))
    return jnp.stack(logits).astype(jnp.float32)


class ShallowClassifier(nn.Module):
  """BYOT's shallow classifier: a stage's map (B, H, W, C) -> (logits (B, num_classes),
  features (B, D)). Its bottleneck brings the map to the final stage's shape (H_f, W_f, D):
  3x3 stride-2 convolutions that double the channels (to at most D) until the map is
  H_f x W_f, then a 1x1 convolution to D channels if it has fewer, each with BatchNorm and
  ReLU; then global average pooling and a linear classifier."""
  num_classes: int
  final_size: int
  features: int
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'

  @nn.compact
  def __call__(self, x, train: bool):
    conv = backbones.static_conv(self.dtype, self.peer_conv)
    norm = backbones.batch_norm(train, self.bn_axis_name)
    while x.shape[1] > self.final_size:
      x = conv(min(2 * x.shape[-1], self.features), (3, 3), 2, padding=1)(x)
      x = nn.relu(norm()(x))
    if x.shape[-1] != self.features:
      x = nn.relu(norm()(conv(self.features, (1, 1))(x)))
    features = jnp.mean(x, axis=(1, 2))
    logits = ClassifierHead(self.num_classes, dtype=self.dtype)(features)
    return logits.astype(jnp.float32), features.astype(jnp.float32)


class SelfDistilledClassifier(nn.Module):
  """A backbone and its head (the deepest classifier) with a ShallowClassifier after every
  stage but the last, under 'shallow_classifiers' ('classifier_<i>' after stage i).

  images (B, H, W, 3) -> (logits (B, C), {'logits': shallow logits (S, B, C), 'features':
  their features (S, B, D), 'deep_features': the backbone's pooled features (B, D)}).
  """
  backbone: nn.Module
  num_classes: int
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'

  @nn.compact
  def __call__(self, images, train: bool, attention_temperature=1.0):
    features, stages = self.backbone(
        images, train=train, **backbones.inputs(self.backbone, attention_temperature))
    logits = ClassifierHead(self.num_classes, dtype=self.dtype, name='head')(features)
    shallow = ShallowClassifiers(self.num_classes, stages[-1].shape[1], features.shape[-1],
                                 self.bn_axis_name, self.dtype, self.peer_conv,
                                 name='shallow_classifiers')(stages[:-1], train)
    return logits.astype(jnp.float32), {**shallow,
                                        'deep_features': features.astype(jnp.float32)}


class ShallowClassifiers(nn.Module):
  """One ShallowClassifier per stage map: -> {'logits': (S, B, C), 'features': (S, B, D)}."""
  num_classes: int
  final_size: int
  features: int
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'

  @nn.compact
  def __call__(self, stages, train: bool):
    outputs = [ShallowClassifier(self.num_classes, self.final_size, self.features,
                                 self.bn_axis_name, self.dtype, self.peer_conv,
                                 name=f'classifier_{i}')(x, train)
               for i, x in enumerate(stages)]
    return {'logits': jnp.stack([logits for logits, _ in outputs]),
            'features': jnp.stack([features for _, features in outputs])}
