"""Backbones: CIFAR ResNets (He et al. 2016), ResNet-18 with a CIFAR stem, Wide ResNets.

Every backbone maps images (B, H, W, 3) to `(features, stages)`: pooled features
(B, D) and the output of each residual stage, a tuple of (B, H_s, W_s, C_s) maps that
Siamese heads may attach to. All take a `width` multiplier on every channel count.
The ResNets have DY variants (Chen et al. 2020) with every 3x3 conv a DynamicConv; they
take the attention temperature as `__call__(x, train, attention_temperature)`.

Every backbone computes in `dtype` (images are cast on entry) with float32 parameters and
BatchNorm statistics, and takes the forms of its convolutions: `peer_conv` (conv.FORMS, how
a convolution runs under DML's vmap) and, for DY backbones, `dynamic_conv`
(dynamic_conv.FORMS).

`split=(i, s)` scales by s the gradient that flows back out of stage i's output (identity
forward): backpropagation rescaling where Siamese heads attach at stage i.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sila_jax.models import conv
from sila_jax.models.batch_norm import BatchNorm
from sila_jax.models.dynamic_conv import DynamicConv

ModuleDef = Any

# He-normal over fan-out, as in the reference ResNet implementations.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


@jax.custom_vjp
def scale_gradient(x: jax.Array, scale: jax.Array | float) -> jax.Array:
  """x unchanged; the gradient that flows back through it is multiplied by `scale` (a
  scalar, applied in float32 whatever x's dtype)."""
  return x


def _scale_gradient_forward(x, scale):
  return x, jnp.asarray(scale, jnp.float32)


def _scale_gradient_backward(scale, gradient):
  return (gradient.astype(jnp.float32) * scale).astype(gradient.dtype), jnp.zeros_like(scale)


scale_gradient.defvjp(_scale_gradient_forward, _scale_gradient_backward)


def inputs(backbone: nn.Module, attention_temperature: Any) -> dict[str, Any]:
  """The keyword inputs `backbone` takes beyond the images and `train`: a DY backbone's
  attention temperature; none for a static one."""
  return ({'attention_temperature': attention_temperature}
          if getattr(backbone, 'dynamic', False) else {})


def end_of_stage(x: jax.Array, stage: int, split: tuple[int, Any] | None) -> jax.Array:
  """Stage `stage`'s output x, its gradient scaled by split[1] if split[0] is that stage."""
  return scale_gradient(x, split[1]) if split is not None and split[0] == stage else x


def static_conv(dtype: Any = jnp.float32, peer_conv: str = 'sliced') -> ModuleDef:
  """Every static convolution: bias-free nn.Conv, He-initialised, computing in `dtype`, run
  under DML's vmap as conv.FORMS[peer_conv]."""
  return functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype,
                           conv_general_dilated=conv.FORMS[peer_conv])


def scaled(channels: int, width: float) -> int:
  """Channel count `channels` scaled by the width multiplier, at least 1."""
  return max(1, int(round(channels * width)))


def batch_norm(train: bool, axis_name: str | None) -> Callable[..., nn.Module]:
  """BatchNorm factory; with `axis_name`, training statistics are averaged over it."""
  return functools.partial(
      BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name if train else None)


def conv3x3(features: int, strides: int, conv: ModuleDef, dynamic: ModuleDef | None):
  """A bias-free 3x3 conv as a function of (x, attention_temperature): a `dynamic` one (a
  DynamicConv factory) if given, which alone uses the attention temperature, else a static
  `conv`."""
  if dynamic is not None:
    return dynamic(features, strides=strides)
  static = conv(features, (3, 3), strides, padding=1)
  return lambda x, attention_temperature: static(x)


def resnet_convs(backbone: nn.Module) -> tuple[ModuleDef, ModuleDef | None]:
  """A ResNet's (static conv factory, DynamicConv factory or None) from its fields."""
  dynamic = None
  if backbone.dynamic:
    dynamic = functools.partial(DynamicConv, num_kernels=backbone.num_kernels,
                                dtype=backbone.dtype, form=backbone.dynamic_conv)
  return static_conv(backbone.dtype, backbone.peer_conv), dynamic


class BasicBlock(nn.Module):
  """Post-activation basic block (two 3x3 convs) of He et al. 2016.

  When the shape changes, the shortcut is the CIFAR ResNets' parameter-free "option A"
  (subsample, zero-pad channels: keeps ResNet-20 at the published 0.27M) or, with
  `projection`, a 1x1 conv + BatchNorm as in ImageNet ResNets. With a `dynamic` factory,
  both 3x3 convs are DynamicConvs; a projection stays a static `conv`.
  """
  features: int
  strides: int
  norm: ModuleDef
  conv: ModuleDef
  projection: bool = False
  dynamic: ModuleDef | None = None

  @nn.compact
  def __call__(self, x, attention_temperature=1.0):
    conv = functools.partial(conv3x3, conv=self.conv, dynamic=self.dynamic)
    y = conv(self.features, self.strides)(x, attention_temperature)
    y = nn.relu(self.norm()(y))
    y = conv(self.features, 1)(y, attention_temperature)
    y = self.norm()(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.projection:
        shortcut = self.conv(self.features, (1, 1), self.strides)(x)
        shortcut = self.norm()(shortcut)
      else:
        shortcut = x[:, ::self.strides, ::self.strides, :]
        extra = self.features - x.shape[-1]
        shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(y + shortcut)


def residual_stage(x: jax.Array, blocks: int, features: int, strides: int, norm: ModuleDef,
                   conv: ModuleDef, dynamic: ModuleDef | None, attention_temperature: Any,
                   projection: bool = False) -> jax.Array:
  """A ResNet stage of `blocks` BasicBlocks at `features` channels, the first with `strides`,
  created in the calling module (BasicBlock_<n> in its numbering)."""
  for block in range(blocks):
    x = BasicBlock(features, strides if block == 0 else 1, norm, conv, projection=projection,
                   dynamic=dynamic)(x, attention_temperature)
  return x


CIFAR_STAGES = (16, 32, 64)  # A CIFAR ResNet's stages' channels, before the width.


class CifarResNet(nn.Module):
  """CIFAR ResNet-(6n+2): three stages of n blocks at 16, 32, 64 channels.

  With `dynamic`, a DY-ResNet: every 3x3 conv is a DynamicConv of `num_kernels` kernels
  whose attention uses `attention_temperature`; otherwise `attention_temperature` is ignored.
  """
  depth: int
  width: float = 1.0
  bn_axis_name: str | None = None
  dynamic: bool = False
  num_kernels: int = 4
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'
  dynamic_conv: str = 'taps'

  @nn.compact
  def __call__(self, x, train: bool, attention_temperature=1.0, split=None):
    if (self.depth - 2) % 6:
      raise ValueError(f'CIFAR ResNet depth must be 6n+2, got {self.depth}.')
    blocks = (self.depth - 2) // 6
    norm = batch_norm(train, self.bn_axis_name)
    conv, dynamic = resnet_convs(self)
    x = conv3x3(scaled(16, self.width), 1, conv, dynamic)(x.astype(self.dtype),
                                                          attention_temperature)
    x = nn.relu(norm()(x))
    stages = []
    for stage, channels in enumerate(CIFAR_STAGES):
      x = residual_stage(x, blocks, scaled(channels, self.width), 2 if stage > 0 else 1, norm,
                         conv, dynamic, attention_temperature)
      x = end_of_stage(x, stage, split)
      stages.append(x)
    return jnp.mean(x, axis=(1, 2)), tuple(stages)


class ResNet18(nn.Module):
  """ResNet-18 with a CIFAR stem: one 3x3 conv, no max-pool, stages at 64-512 channels.

  `dynamic`, `num_kernels` and `attention_temperature` as in CifarResNet.
  """
  width: float = 1.0
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bn_axis_name: str | None = None
  dynamic: bool = False
  num_kernels: int = 4
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'
  dynamic_conv: str = 'taps'

  @nn.compact
  def __call__(self, x, train: bool, attention_temperature=1.0, split=None):
    norm = batch_norm(train, self.bn_axis_name)
    conv, dynamic = resnet_convs(self)
    x = conv3x3(scaled(64, self.width), 1, conv, dynamic)(x.astype(self.dtype),
                                                          attention_temperature)
    x = nn.relu(norm()(x))
    stages = []
    for stage, blocks in enumerate(self.stage_sizes):
      x = residual_stage(x, blocks, scaled(64 * 2**stage, self.width), 2 if stage > 0 else 1,
                         norm, conv, dynamic, attention_temperature, projection=True)
      x = end_of_stage(x, stage, split)
      stages.append(x)
    return jnp.mean(x, axis=(1, 2)), tuple(stages)


class WideBlock(nn.Module):
  """Pre-activation wide block (Zagoruyko & Komodakis 2016) with optional dropout."""
  features: int
  strides: int
  norm: ModuleDef
  conv: ModuleDef
  dropout_rate: float
  train: bool

  @nn.compact
  def __call__(self, x):
    pre = nn.relu(self.norm()(x))
    y = self.conv(self.features, (3, 3), self.strides, padding=1)(pre)
    y = nn.relu(self.norm()(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not self.train)(y)
    y = self.conv(self.features, (3, 3), padding=1)(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = self.conv(self.features, (1, 1), self.strides)(pre)
    return y + shortcut


class WideResNet(nn.Module):
  """WRN-depth-k: three stages of (depth-4)/6 wide blocks at 16k, 32k, 64k channels."""
  depth: int
  widen_factor: int
  width: float = 1.0
  dropout_rate: float = 0.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'

  @nn.compact
  def __call__(self, x, train: bool, split=None):
    if (self.depth - 4) % 6:
      raise ValueError(f'Wide ResNet depth must be 6n+4, got {self.depth}.')
    blocks = (self.depth - 4) // 6
    norm = batch_norm(train, self.bn_axis_name)
    conv = static_conv(self.dtype, self.peer_conv)
    x = conv(scaled(16, self.width), (3, 3), padding=1)(x.astype(self.dtype))
    stages = []
    for stage, channels in enumerate((16, 32, 64)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = WideBlock(scaled(channels * self.widen_factor, self.width), strides, norm, conv,
                      self.dropout_rate, train)(x)
      x = end_of_stage(x, stage, split)
      stages.append(x)
    x = nn.relu(norm()(x))
    return jnp.mean(x, axis=(1, 2)), tuple(stages)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    'resnet8': functools.partial(CifarResNet, depth=8),
    'resnet20': functools.partial(CifarResNet, depth=20),
    'resnet32': functools.partial(CifarResNet, depth=32),
    'resnet44': functools.partial(CifarResNet, depth=44),
    'resnet56': functools.partial(CifarResNet, depth=56),
    'resnet110': functools.partial(CifarResNet, depth=110),
    'resnet18': ResNet18,
    'dy_resnet8': functools.partial(CifarResNet, depth=8, dynamic=True),
    'dy_resnet20': functools.partial(CifarResNet, depth=20, dynamic=True),
    'dy_resnet32': functools.partial(CifarResNet, depth=32, dynamic=True),
    'dy_resnet56': functools.partial(CifarResNet, depth=56, dynamic=True),
    'dy_resnet18': functools.partial(ResNet18, dynamic=True),
    'wrn16_4': functools.partial(WideResNet, depth=16, widen_factor=4),
    'wrn28_10': functools.partial(WideResNet, depth=28, widen_factor=10),
}


def num_stages(name: str) -> int:
  """The residual stages backbone `name` has: what sila.attach='stage<i>' may name."""
  return len(ResNet18.stage_sizes) if name.endswith('resnet18') else 3


def create_backbone(name: str, *, width: float = 1.0, dropout_rate: float = 0.0,
                    bn_axis_name: str | None = None, num_kernels: int = 4,
                    dtype: Any = jnp.float32, peer_conv: str = 'sliced',
                    dynamic_conv: str = 'taps') -> nn.Module:
  """Backbone `name` from BACKBONES computing in `dtype` with the convolution forms
  `peer_conv` (conv.FORMS) and `dynamic_conv` (dynamic_conv.FORMS); dropout applies to Wide
  ResNets only, `num_kernels` and `dynamic_conv` to the DY (dynamic) ResNets only. Config
  checks refuse a name not in BACKBONES."""
  kwargs = dict(width=width, bn_axis_name=bn_axis_name, dtype=dtype, peer_conv=peer_conv)
  if name.startswith('wrn'):
    kwargs['dropout_rate'] = dropout_rate
  if name.startswith('dy_'):
    kwargs.update(num_kernels=num_kernels, dynamic_conv=dynamic_conv)
  return BACKBONES[name](**kwargs)
