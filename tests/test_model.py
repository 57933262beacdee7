"""The parameter tree reads like the method; test time keeps exactly the plain model."""
import chex
import jax
import jax.numpy as jnp
import pytest

from sila_jax.models import heads
from sila_jax.models import model as model_lib


def init(config, **kwargs):
  model = model_lib.create_model(config, **kwargs)
  images = jnp.ones((3, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  return model, variables, model.apply(variables, images, train=False)


def test_tree_and_shapes_with_two_siamese_heads(tiny_config):
  tiny_config.sila.update(num_heads=2, attach='features')
  _, variables, (logits, siamese) = init(tiny_config)
  assert set(variables['params']) == {'backbone', 'head', 'siamese_heads'}
  assert set(variables['params']['siamese_heads']) == {'head_0', 'head_1'}
  chex.assert_shape(logits, (3, 10))
  chex.assert_shape(siamese, (2, 3, 10))


def test_plain_model_has_no_siamese_heads(tiny_config):
  tiny_config.sila.enabled = False
  _, variables, (logits, siamese) = init(tiny_config)
  assert set(variables['params']) == {'backbone', 'head'}
  assert siamese is None
  chex.assert_shape(logits, (3, 10))


@pytest.mark.parametrize('head,attach', [('twin', 'features'), ('mlp', 'features'),
                                         ('twin', 'stage2'), ('mlp', 'stage1')])
def test_main_branch_equals_plain_model_exactly(tiny_config, head, attach):
  tiny_config.sila.update(head=head, attach=attach, num_heads=2)
  _, sila_vars, _ = init(tiny_config)
  plain_config = tiny_config.copy_and_resolve_references()
  plain_config.sila.enabled = False
  _, plain_vars, _ = init(plain_config)
  exported = model_lib.main_branch(sila_vars)
  chex.assert_trees_all_equal_shapes_and_dtypes(exported, plain_vars)
  assert model_lib.count_params(exported['params']) == model_lib.count_params(plain_vars['params'])
  assert model_lib.count_params(sila_vars['params']) > model_lib.count_params(plain_vars['params'])


def test_main_branch_only_model_applies_exported_variables(tiny_config):
  model, variables, (logits, _) = init(tiny_config)
  plain = model_lib.create_model(tiny_config, main_branch_only=True)
  test_logits, none = plain.apply(model_lib.main_branch(variables), jnp.ones((3, 32, 32, 3)),
                                  train=False)
  assert none is None
  chex.assert_trees_all_close(test_logits, logits)


def test_stage_attachment_adds_adapters(tiny_config):
  tiny_config.sila.attach = 'stage2'
  _, variables, (_, siamese) = init(tiny_config)
  assert set(variables['params']['siamese_heads']) == {'adapter_0', 'head_0'}
  assert 'adapter_0' in variables['batch_stats']['siamese_heads']
  chex.assert_shape(siamese, (1, 3, 10))


@pytest.mark.parametrize('attach', ['stage0', 'block2', 'stage'])
def test_bad_attach_is_rejected(attach):
  with pytest.raises(ValueError, match='sila.attach'):
    heads.parse_attach(attach)


def test_kernel_forms_resolve_auto_per_backend_and_reach_the_model(tiny_config):
  for backend in ('cpu', 'gpu', 'tpu'):
    assert model_lib.kernel_forms(tiny_config.kernels, backend) == model_lib.AUTO_KERNELS[backend]
  tiny_config.model = 'dy_resnet8'
  tiny_config.kernels.update(peer_conv='grouped', dynamic_conv='grouped')
  assert model_lib.kernel_forms(tiny_config.kernels, 'cpu') == {'peer_conv': 'grouped',
                                                                'dynamic_conv': 'grouped'}
  model = model_lib.create_model(tiny_config)
  assert (model.peer_conv, model.backbone.peer_conv, model.backbone.dynamic_conv) == (
      'grouped', 'grouped', 'grouped')
