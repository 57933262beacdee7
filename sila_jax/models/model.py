"""The SiLa classifier: backbone, main head and Siamese heads in one parameter tree.

Parameters read `{'backbone', 'head', 'siamese_heads'}`; with no Siamese heads the model
is exactly the plain classifier `{'backbone', 'head'}`, which is what evaluation and
export use (`main_branch`). With `dtype='bfloat16'` convolutions and matmuls compute in
bfloat16; parameters, BatchNorm statistics and the logits the losses read stay float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sila_jax.models import backbones
from sila_jax.models import heads

MAIN_BRANCH = ('backbone', 'head')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}  # config.dtype -> compute dtype.

# The form each config.kernels field 'auto' takes on a backend (jax.default_backend()):
# whichever computes forward + backward fastest there, as `python -m benchmarks.kernels`
# measures. On XLA:CPU the sliced peer convolution (sila_jax/models/conv.py: 15 ms per peer
# against 660 ms for the grouped one of two peers) and the taps per-sample convolution
# (dynamic_conv.per_sample_conv: 76 ms against 13 s). On an H200 (batch 512;
# results/device/2026-11-27-nvidia-h200/) the grouped per-sample convolution: the float32
# DY-ResNet-20 train step takes 11.4 against 23.0 ms (kernels.jsonl). The peer convolution
# stays sliced there: grouped, two float32 ResNet-20 peers are 5 % faster (11.8 against
# 12.4 ms), but two bfloat16 ResNet-18 peers take 19.2 ms a step in the training loop, 2.8
# times one ResNet-18's 6.8 ms (throughput_2.jsonl, measured with grouped).
# TPU is unmeasured and takes CPU's choices.
AUTO_KERNELS = {
    'cpu': {'peer_conv': 'sliced', 'dynamic_conv': 'taps'},
    'gpu': {'peer_conv': 'sliced', 'dynamic_conv': 'grouped'},
    'tpu': {'peer_conv': 'sliced', 'dynamic_conv': 'taps'},
}


class SilaClassifier(nn.Module):
  """images (B, H, W, 3) -> (main logits (B, C), Siamese logits (K, B, C) or None).

  The heads compute in `dtype` like the backbone, and stage adapters' convolutions run as
  conv.FORMS[peer_conv] under DML's vmap.
  """
  backbone: nn.Module
  num_classes: int
  num_siamese_heads: int = 0
  siamese_head: str = 'twin'
  attach: str = 'features'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  peer_conv: str = 'sliced'

  @nn.compact
  def __call__(self, images, train: bool, attention_temperature=1.0, backbone_grad_scale=1.0):
    """`attention_temperature`: that of dynamic convolutions' attention (dy_* backbones).
    `backbone_grad_scale`: multiplies the gradient all heads send back into the backbone at
    the point where the Siamese heads attach (backpropagation rescaling; 1 leaves it as it
    is); it does nothing without Siamese heads.

    Logits are float32 whatever `dtype` the model computes in: the losses' softmax and
    log-sum-exp need float32's range and precision.
    """
    stage = heads.parse_attach(self.attach) if self.num_siamese_heads else None
    kwargs = backbones.inputs(self.backbone, attention_temperature)
    if stage is not None:
      kwargs['split'] = (stage, backbone_grad_scale)
    features, stages = self.backbone(images, train=train, **kwargs)
    if self.num_siamese_heads and stage is None:
      features = backbones.scale_gradient(features, backbone_grad_scale)
    logits = heads.ClassifierHead(self.num_classes, dtype=self.dtype, name='head')(features)
    if not self.num_siamese_heads:
      return logits.astype(jnp.float32), None
    siamese_logits = heads.SiameseHeads(
        self.num_siamese_heads, self.num_classes, self.siamese_head, self.attach,
        self.bn_axis_name, self.dtype, self.peer_conv, name='siamese_heads')(
            features, stages, train)
    return logits.astype(jnp.float32), siamese_logits.astype(jnp.float32)


def create_backbone(config: ml_collections.ConfigDict,
                    bn_axis_name: str | None = None) -> nn.Module:
  """The backbone `config` describes, computing in config.dtype with its kernel forms."""
  return backbones.create_backbone(
      config.model, width=config.width, dropout_rate=config.dropout_rate,
      bn_axis_name=bn_axis_name, num_kernels=config.dynamic.num_kernels,
      dtype=DTYPES[config.dtype], **kernel_forms(config.kernels))


def create_model(config: ml_collections.ConfigDict, *, main_branch_only: bool = False,
                 bn_axis_name: str | None = None) -> SilaClassifier:
  """The model `config` describes; `main_branch_only` drops the Siamese heads (test time)."""
  num_heads = config.sila.num_heads if config.sila.enabled else 0
  dtype, forms = DTYPES[config.dtype], kernel_forms(config.kernels)
  return SilaClassifier(
      backbone=create_backbone(config, bn_axis_name),
      num_classes=config.num_classes,
      num_siamese_heads=0 if main_branch_only else num_heads,
      siamese_head=config.sila.head,
      attach=config.sila.attach,
      bn_axis_name=bn_axis_name,
      dtype=dtype,
      peer_conv=forms['peer_conv'])


def kernel_forms(kernels: ml_collections.ConfigDict,
                 backend: str | None = None) -> dict[str, str]:
  """config.kernels with 'auto' resolved by AUTO_KERNELS for `backend` (default: JAX's; one
  not listed takes CPU's): {'peer_conv': a conv.FORMS key, 'dynamic_conv': a
  dynamic_conv.FORMS key}."""
  auto = AUTO_KERNELS.get(backend or jax.default_backend(), AUTO_KERNELS['cpu'])
  return {name: auto[name] if form == 'auto' else form for name, form in kernels.items()}


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
