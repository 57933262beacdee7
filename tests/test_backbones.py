"""Backbone output shapes and parameter counts against the published figures."""
import chex
import jax
import jax.numpy as jnp
import pytest

from sila_jax.models import backbones
from sila_jax.models import model as model_lib

# Published parameter counts (He et al. 2016; Zagoruyko & Komodakis 2016; ResNet-18 on CIFAR).
PUBLISHED = {
    'resnet20': 0.27e6, 'resnet32': 0.46e6, 'resnet44': 0.66e6, 'resnet56': 0.85e6,
    'resnet110': 1.7e6, 'resnet18': 11.2e6, 'wrn16_4': 2.75e6, 'wrn28_10': 36.5e6,
}
# (final feature width, number of stages, spatial size of the last stage at 32x32 input).
LAYOUT = {
    'resnet8': (64, 3, 8), 'resnet20': (64, 3, 8), 'resnet32': (64, 3, 8), 'resnet44': (64, 3, 8),
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


@pytest.mark.slow
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



DYNAMIC = {'dy_resnet8': 'resnet8', 'dy_resnet20': 'resnet20', 'dy_resnet32': 'resnet32',
           'dy_resnet56': 'resnet56', 'dy_resnet18': 'resnet18'}


def conv3x3_channels(name, width):
  """(C_in, C_out) of every 3x3 conv of static backbone `name`, stem first."""
  if name == 'resnet18':
    channels, blocks = [backbones.scaled(64 * 2**s, width) for s in range(4)], 2
  else:
    channels = [backbones.scaled(c, width) for c in (16, 32, 64)]
    blocks = (int(name.removeprefix('resnet')) - 2) // 6
  convs, previous = [(3, channels[0])], channels[0]
  for c in channels:
    convs += [(previous, c), (c, c)] + [(c, c)] * 2 * (blocks - 1)
    previous = c
  return convs


@pytest.mark.parametrize('width', [1.0, 0.25])
@pytest.mark.parametrize('name', sorted(DYNAMIC))
def test_dynamic_parameter_count(name, width):
  static = DYNAMIC[name]
  convs = conv3x3_channels(static, width)
  assert len(convs) == {'resnet18': 17}.get(static, int(static.removeprefix('resnet')) - 1)
  num_kernels = 4
  extra = 0
  for c_in, c_out in convs:
    hidden = max(c_in // 4, 4)
    attention = c_in * hidden + hidden + hidden * num_kernels + num_kernels
    extra += (num_kernels - 1) * 3 * 3 * c_in * c_out + attention
  assert backbone_params(name, width) == backbone_params(static, width) + extra


def test_dy_resnet20_exact_count():
  # ResNet-20's 269,072, three more copies of its 267,696 3x3-kernel weights, and the 19
  # attention branches (stem 36, 7 at 16 in-channels 88, 6 at 32 300, 5 at 64 1,108).
  assert backbone_params('dy_resnet20') == 269_072 + 3 * 267_696 + 7_992


def test_num_kernels_reaches_every_dynamic_conv():
  variables = model_lib.abstract_variables(
      backbones.create_backbone('dy_resnet20', num_kernels=2), 32)
  kernels = [x.shape[0] for path, x in jax.tree_util.tree_leaves_with_path(variables['params'])
             if path[-1].key == 'kernel' and x.ndim == 5]
  assert kernels == [2] * 19


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(DYNAMIC))
def test_dynamic_output_shapes(name):
  features_dim, num_stages, last_size = LAYOUT[DYNAMIC[name]]
  backbone = backbones.create_backbone(name, width=0.25)
  images = jnp.ones((2, 32, 32, 3))
  variables = backbone.init(jax.random.PRNGKey(0), images, train=False)
  features, stages = backbone.apply(variables, images, train=False, attention_temperature=30.0)
  chex.assert_shape(features, (2, backbones.scaled(features_dim, 0.25)))
  assert len(stages) == num_stages
  chex.assert_shape(stages[-1], (2, last_size, last_size, features.shape[-1]))
  chex.assert_tree_all_finite(features)


@pytest.mark.parametrize('name, changes', [('dy_resnet20', True), ('resnet20', False)])
def test_attention_temperature_changes_only_dynamic_backbones(name, changes):
  backbone = backbones.create_backbone(name, width=0.25)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = backbone.init(jax.random.PRNGKey(1), images, train=False)
  cool, hot = (backbone.apply(variables, images, train=False, attention_temperature=t)[0]
               for t in (1.0, 30.0))
  assert bool(jnp.any(jnp.abs(cool - hot) > 1e-4)) == changes
