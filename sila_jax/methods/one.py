"""ONE, On-the-fly Native Ensemble (Lan, Zhu, Gong, NeurIPS 2018): `one.num_branches`
branches share a CIFAR ResNet's lower stages, each with its own copy of the last stage and
head; a gate weighs their logits into the ensemble teacher, which every branch distils from.
Branch 0 is the plain classifier and ships. Config: `one.*`; per run:
one_temperature, label_smoothing."""
from sila_jax.methods import branched
from sila_jax.methods import losses


class One(branched.Branched):
  """BranchedClassifier with a gate; branch outputs {'branches': (m - 1, B, C), 'gate':
  (B, m)}. The branches' ensemble is the gated one, the teacher."""
  structure_fields = ('one.num_branches',)
  gated = True
  metric_names = ('loss_branches', 'loss_ensemble', 'loss_distill')
  rules = {
      'one.num_branches': branched.NUM_BRANCHES_RULE,
      'one.temperature': (lambda v: v > 0, 'must be positive'),
  }

  @staticmethod
  def num_branches(config):
    return config.one.num_branches

  def loss(self, logits, outputs, labels, settings):
    return losses.one_loss(logits, outputs['branches'], outputs['gate'], labels,
                           temperature=settings['one_temperature'],
                           label_smoothing=settings['label_smoothing'])

  def ensemble(self, every, outputs):
    return losses.gated_ensemble(every, outputs['gate'])
