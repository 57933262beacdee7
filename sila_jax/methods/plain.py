"""Plain training: the classifier alone, cross-entropy on its logits (SILA.md's baseline)."""
from sila_jax.methods import base
from sila_jax.methods import losses
from sila_jax.models import model as model_lib


class Plain(base.Method):
  """No branch beside the main one: the training model is the deployed one."""

  def create_model(self, config, bn_axis_name):
    return model_lib.create_model(config, main_branch_only=True, bn_axis_name=bn_axis_name)

  def loss(self, logits, branches, labels, settings):
    return losses.plain_loss(logits, labels, label_smoothing=settings['label_smoothing'])
