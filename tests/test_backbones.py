"""Backbone output shapes and parameter counts against the published figures."""
import chex
import jax
import jax.numpy as jnp
import pytest

from sila_jax import backbones
from sila_jax import model as model_lib

# Published parameter counts (He et al. 2016; Zagoruyko & Komodakis 2016; ResNet-18 on CIFAR).
PUBLISHED = {
    'resnet20': 0.27e6, 'resnet32': 0.46e6, 'resnet44': 0.66e6, 'resnet56': 0.85e6,
    'resnet110': 1.7e6, 'resnet18': 11.2e6, 'wrn16_4': 2.75e6, 'wrn28_10': 36.5e6,
}
# (final feature width, number of stages, spatial size of the last stage at 32x32 input).
LAYOUT = {
    'resnet20': (64, 3, 8), 'resnet32': (64, 3, 8), 'resnet44': (64, 3, 8),
    'resnet56': (64, 3, 8), 'resnet110': (64, 3, 8), 'resnet18': (512, 4, 4),
    'wrn16_4': (256, 3, 8), 'wrn28_10': (640, 3, 8),
}


def backbone_params(name, width=1.0):
  variables = model_lib.abstract_variables(backbones.create_backbone(name, width=width), 32)
  return model_lib.count_params(variables['params'])


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
  head = LAYOUT[name][0] * 10 + 10  # The published counts include the CIFAR-10 classifier.
  count = backbone_params(name) + head
  assert abs(count / PUBLISHED[name] - 1) < 0.02, count


def test_resnet20_exact_count():
  assert backbone_params('resnet20') + 64 * 10 + 10 == 269_722


def test_width_multiplier_scales_parameters_quadratically():
  ratio = backbone_params('resnet56', width=0.5) / backbone_params('resnet56')
  assert 0.24 < ratio < 0.27


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_output_shapes(name):
  features_dim, num_stages, last_size = LAYOUT[name]
  backbone = backbones.create_backbone(name, width=0.125)
  images = jnp.ones((2, 32, 32, 3))
  variables = backbone.init(jax.random.PRNGKey(0), images, train=False)
  features, stages = backbone.apply(variables, images, train=False)
  chex.assert_shape(features, (2, backbones.scaled(features_dim, 0.125)))
  assert len(stages) == num_stages
  chex.assert_shape(stages[-1], (2, last_size, last_size, features.shape[-1]))
  chex.assert_tree_all_finite(features)


def test_unknown_backbone_names_the_choices():
  with pytest.raises(ValueError, match='Unknown model .*resnet20'):
    backbones.create_backbone('resnet21')
