"""Collaborative learning with backpropagation rescaling (CL-ILR; Song & Chai, NeurIPS
2018): `clilr.num_heads` heads share a CIFAR ResNet's lower stages, each with its own copy
of the last stage and classifier; the gradient they send back into the shared stages is
divided by their number, and each learns from the label and from the others' mean soft
prediction. Head 0 is the plain classifier and ships. Config: `clilr.*`; per run:
clilr_beta, label_smoothing."""
from sila_jax.methods import base
from sila_jax.methods import losses
from sila_jax.methods import peers
from sila_jax.models import branches
from sila_jax.models import model as model_lib


class ClIlr(base.Method):
  """BranchedClassifier without a gate; branch outputs {'branches': (m - 1, B, C)}."""
  structure_fields = ('clilr.num_heads',)
  metric_names = ('loss_branches', 'loss_distill')
  rules = {
      'clilr.num_heads': (lambda v: 2 <= v <= branches.MAX_BRANCHES,
                          f'must be in 2..{branches.MAX_BRANCHES}'),
      'clilr.beta': (lambda v: 0 <= v <= 1, 'must be in [0, 1]'),
      'clilr.temperature': (lambda v: v > 0, 'must be positive'),
  }

  def create_model(self, config, bn_axis_name):
    return branches.BranchedClassifier(
        model_lib.create_backbone(config, bn_axis_name), config.num_classes,
        config.clilr.num_heads, dtype=model_lib.DTYPES[config.dtype])

  def model_inputs(self, settings):
    """The shared stages' gradient scale, 1 / num_heads."""
    return {'trunk_grad_scale': 1.0 / self.config.clilr.num_heads}

  def loss(self, logits, outputs, labels, settings):
    return losses.clilr_loss(logits, outputs['branches'], labels, beta=settings['clilr_beta'],
                             temperature=self.config.clilr.temperature,
                             label_smoothing=settings['label_smoothing'])

  @classmethod
  def problems(cls, config):
    return branches.backbone_problems(peers.peer_models(config), 'clilr')
