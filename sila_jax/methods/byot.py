"""Be Your Own Teacher (Zhang et al., ICCV 2019): a shallow classifier after every stage but
the last, each learning from the label, from the deepest classifier's soft prediction and
from its features; the deepest classifier (the plain one) ships. Config: `byot.*`; per run:
byot_alpha, byot_temperature, byot_feature_weight, label_smoothing."""
from sila_jax.methods import base
from sila_jax.methods import losses
from sila_jax.models import branches
from sila_jax.models import model as model_lib


class Byot(base.Method):
  """SelfDistilledClassifier; branch outputs {'logits': (S, B, C), 'features': (S, B, D),
  'deep_features': (B, D)}."""
  metric_names = ('loss_shallow', 'loss_distill', 'loss_features')
  rules = {
      'byot.alpha': (lambda v: 0 <= v <= 1, 'must be in [0, 1]'),
      'byot.temperature': (lambda v: v > 0, 'must be positive'),
      'byot.feature_weight': (lambda v: v >= 0, 'must not be negative'),
  }

  def create_model(self, config, bn_axis_name):
    forms = model_lib.kernel_forms(config.kernels)
    return branches.SelfDistilledClassifier(
        model_lib.create_backbone(config, bn_axis_name), config.num_classes, bn_axis_name,
        model_lib.DTYPES[config.dtype], forms['peer_conv'])

  def loss(self, logits, outputs, labels, settings):
    return losses.byot_loss(logits, outputs['logits'], outputs['features'],
                            outputs['deep_features'], labels, alpha=settings['byot_alpha'],
                            temperature=settings['byot_temperature'],
                            feature_weight=settings['byot_feature_weight'],
                            label_smoothing=settings['label_smoothing'])
