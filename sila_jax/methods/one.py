"""ONE, On-the-fly Native Ensemble (Lan, Zhu, Gong, NeurIPS 2018): `one.num_branches`
branches share a CIFAR ResNet's lower stages, each with its own copy of the last stage and
head; a gate weighs their logits into the ensemble teacher, which every branch distils from.
Branch 0 is the plain classifier and ships. Config: `one.*`; per run: label_smoothing."""
from sila_jax.methods import base
from sila_jax.methods import losses
from sila_jax.methods import peers
from sila_jax.models import branches
from sila_jax.models import model as model_lib


class One(base.Method):
  """BranchedClassifier with a gate; branch outputs {'branches': (m - 1, B, C), 'gate':
  (B, m)}."""
  structure_fields = ('one.num_branches',)
  metric_names = ('loss_branches', 'loss_ensemble', 'loss_distill')
  rules = {
      'one.num_branches': (lambda v: 2 <= v <= branches.MAX_BRANCHES,
                           f'must be in 2..{branches.MAX_BRANCHES}'),
      'one.temperature': (lambda v: v > 0, 'must be positive'),
  }

  def create_model(self, config, bn_axis_name):
    return branches.BranchedClassifier(
        model_lib.create_backbone(config, bn_axis_name), config.num_classes,
        config.one.num_branches, gate=True, dtype=model_lib.DTYPES[config.dtype])

  def loss(self, logits, outputs, labels, settings):
    return losses.one_loss(logits, outputs['branches'], outputs['gate'], labels,
                           temperature=self.config.one.temperature,
                           label_smoothing=settings['label_smoothing'])

  @classmethod
  def problems(cls, config):
    return branches.backbone_problems(peers.peer_models(config), 'one')
