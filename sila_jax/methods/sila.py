"""SiLa (SILA.md): Siamese heads beside the main head, each supervised with a copy of the
label (`twin` or `joint` loss, optional head-to-head KL), with optional backpropagation
rescaling where they attach. Config: `sila.*`; per run: sila_weight, sila_kl_weight,
rescale_backbone_grad, label_smoothing."""
from sila_jax.methods import base
from sila_jax.methods import losses
from sila_jax.methods import peers
from sila_jax.models import backbones
from sila_jax.models import heads
from sila_jax.models import model as model_lib


class Sila(base.Method):
  """The classifier and `sila.num_heads` Siamese heads under 'siamese_heads'; branch outputs
  are their logits (S, B, C)."""
  structure_fields = ('sila.enabled', 'sila.num_heads', 'sila.head', 'sila.attach')
  metric_names = ('loss_siamese', 'loss_kl')
  choices = {'sila.variant': losses.VARIANTS, 'sila.head': heads.HEAD_TYPES}
  rules = {
      'sila.num_heads': (lambda v: 0 < v <= heads.MAX_SIAMESE_HEADS,
                         f'must be in 1..{heads.MAX_SIAMESE_HEADS} (each head is a module of '
                         'its own, so building the model takes time in proportion to their '
                         'number)'),
      'sila.temperature': (lambda v: v > 0, 'must be positive'),
      'sila.weight': (lambda v: v >= 0, 'must not be negative'),
      'sila.kl_weight': (lambda v: v >= 0, 'must not be negative'),
  }

  def create_model(self, config, bn_axis_name):
    return model_lib.create_model(config, bn_axis_name=bn_axis_name)

  def model_inputs(self, settings):
    """The gradient scale where the heads attach: 1 / (1 + lambda * num_heads) with
    rescaling on, else 1."""
    rescale, weight = settings['rescale_backbone_grad'], settings['sila_weight']
    return {'backbone_grad_scale': 1.0 / (1.0 + rescale * weight * self.config.sila.num_heads)}

  def loss(self, logits, branches, labels, settings):
    sila = self.config.sila
    return losses.sila_loss(logits, branches, labels, variant=sila.variant,
                            weight=settings['sila_weight'],
                            kl_weight=settings['sila_kl_weight'], temperature=sila.temperature,
                            label_smoothing=settings['label_smoothing'])

  @classmethod
  def problems(cls, config):
    sila = config.sila
    try:
      stage = heads.parse_attach(sila.attach)
    except ValueError as e:
      yield str(e)
    else:
      for name in dict.fromkeys(peers.peer_models(config)):
        if (stage is not None and name in backbones.BACKBONES
            and stage >= backbones.num_stages(name)):
          yield (f'sila.attach={sila.attach!r}, but {name} has stages 1..'
                 f'{backbones.num_stages(name)}.')
    if sila.rescale_backbone_grad and sila.variant != 'twin':
      yield (f"sila.rescale_backbone_grad applies to the twin variant, not "
             f"{sila.variant!r}: joint heads share one softmax and add no step.")
