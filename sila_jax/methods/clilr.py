"""Collaborative learning with backpropagation rescaling (CL-ILR; Song & Chai, NeurIPS
2018): `clilr.num_heads` heads share a CIFAR ResNet's lower stages, each with its own copy
of the last stage and classifier; the gradient they send back into the shared stages is
divided by their number, and each learns from the label and from the others' mean soft
prediction. Head 0 is the plain classifier and ships. Config: `clilr.*`; per run:
clilr_beta, clilr_temperature, label_smoothing."""
from sila_jax.methods import branched
from sila_jax.methods import losses


class ClIlr(branched.Branched):
  """BranchedClassifier without a gate; branch outputs {'branches': (m - 1, B, C)}. The
  heads' ensemble is their mean prediction."""
  structure_fields = ('clilr.num_heads',)
  metric_names = ('loss_branches', 'loss_distill')
  rules = {
      'clilr.num_heads': branched.NUM_BRANCHES_RULE,
      'clilr.beta': (lambda v: 0 <= v <= 1, 'must be in [0, 1]'),
      'clilr.temperature': (lambda v: v > 0, 'must be positive'),
  }

  def model_inputs(self, settings):
    """The shared stages' gradient scale, 1 / num_heads."""
    return {'trunk_grad_scale': 1.0 / self.config.clilr.num_heads}

  @staticmethod
  def num_branches(config):
    return config.clilr.num_heads

  def loss(self, logits, outputs, labels, settings):
    return losses.clilr_loss(logits, outputs['branches'], labels, beta=settings['clilr_beta'],
                             temperature=settings['clilr_temperature'],
                             label_smoothing=settings['label_smoothing'])

  def ensemble(self, every, outputs):
    return losses.mean_prediction(every)
