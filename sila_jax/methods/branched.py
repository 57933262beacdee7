"""What ONE and CL-ILR share: `num_branches` copies of a CIFAR ResNet's last stage and head
on its shared lower stages (models.branches.BranchedClassifier), branch 0 the plain classifier
that ships; evaluation scores every branch and the branches' ensemble beside it."""
import abc
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from sila_jax.methods import base
from sila_jax.methods import peers
from sila_jax.models import branches
from sila_jax.models import model as model_lib
from sila_jax.training import metrics

# The rule of a branch count field.
NUM_BRANCHES_RULE = (lambda v: 2 <= v <= branches.MAX_BRANCHES,
                     f'must be in 2..{branches.MAX_BRANCHES}')


class Branched(base.Method):
  """A method training a BranchedClassifier of `num_branches(config)` branches, with ONE's
  gate if `gated`."""
  gated: ClassVar[bool] = False

  @staticmethod
  @abc.abstractmethod
  def num_branches(config) -> int:
    """The branches of `config`'s classifier, m."""

  @abc.abstractmethod
  def ensemble(self, every: jax.Array, outputs: dict[str, jax.Array]) -> jax.Array:
    """One peer's branches' ensemble as scores (B, C), from every branch's logits (m, B, C)
    and the model's branch outputs."""

  def create_model(self, config, bn_axis_name):
    return branches.BranchedClassifier(
        model_lib.create_backbone(config, bn_axis_name), config.num_classes,
        self.num_branches(config), gate=self.gated,
        dtype=model_lib.DTYPES[config.dtype])

  @classmethod
  def problems(cls, config):
    return branches.backbone_problems(peers.peer_models(config), config.method)

  def predictions(self, variables: dict[str, Any], images: jax.Array,
                  attention_temperature: jax.Array | float) -> dict[str, jax.Array]:
    """peers.predictions of branch 0, with every branch's logits under metrics.BRANCHES
    (K, m, B, C) and their `ensemble` under metrics.BRANCH_ENSEMBLE (K, B, C)."""
    logits, outputs, _ = peers.apply(self.groups, variables, images, train=False,
                                     attention_temperature=attention_temperature)
    every = jnp.concatenate([logits[:, None], outputs['branches']], axis=1)
    return {**peers.predictions(logits), metrics.BRANCHES: every,
            metrics.BRANCH_ENSEMBLE: jax.vmap(self.ensemble)(every, outputs)}

  def evaluated(self, variables):
    """Every peer's variables whole: the branches are scored too."""
    return variables

  def evaluated_abstract(self):
    return self.abstract_variables(self.groups)
