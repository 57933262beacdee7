"""The method interface: which class a config trains with, and a method added as one class
trains, validates, exports and evaluates through the unchanged loop."""
import chex
import jax
import numpy as np
import pytest

from sila_jax import methods
from sila_jax.evaluation import evaluate
from sila_jax.evaluation import export
from sila_jax.methods import losses
from sila_jax.methods import peers
from sila_jax.models import model as model_lib
from sila_jax.training import metrics
from sila_jax.training import train
from tests.helpers import batches, plain_param_count


def test_the_config_names_the_method(tiny_config):
  assert type(methods.create(tiny_config)) is methods.Sila
  tiny_config.sila.enabled = False  # SiLa off is plain training, as before config.method.
  assert type(methods.create(tiny_config)) is methods.Plain
  tiny_config.update(method='plain')
  tiny_config.sila.enabled = True
  assert type(methods.create(tiny_config)) is methods.Plain
  assert methods.structure_fields(tiny_config) == ('method',)
  tiny_config.method = 'sila'
  assert methods.structure_fields(tiny_config) == (
      'method', 'sila.enabled', 'sila.num_heads', 'sila.head', 'sila.attach')


def test_plain_training_builds_the_deployed_model_and_its_loss(tiny_config):
  tiny_config.method = 'plain'  # sila.enabled stays True: the plain method ignores it.
  method = methods.create(tiny_config)
  chex.assert_trees_all_equal_structs(
      model_lib.abstract_variables(method.groups[0][0], 32),
      model_lib.abstract_variables(method.deployable_groups[0][0], 32))
  variables = method.init_variables(jax.random.PRNGKey(0), (32, 32, 3))
  batch = batches(1)[0]
  settings = {'label_smoothing': 0.1, 'dml_weight': 1.0}
  objectives, step_metrics, _ = method.objectives(
      variables, batch, step=0, settings=settings, rng=jax.random.PRNGKey(1))
  (model, _), = method.groups
  (logits, _), _ = model.apply(peers.peer_variables(tiny_config, variables, 0), batch['image'],
                               train=True, mutable=['batch_stats'])
  expected, _ = losses.plain_loss(logits, batch['label'], label_smoothing=0.1)
  chex.assert_shape(objectives, (1,))
  assert set(step_metrics) == {'loss', 'loss_main', 'accuracy', metrics.PEERS}
  np.testing.assert_allclose(objectives[0], expected, rtol=1e-6)


def test_sila_scales_the_backbone_gradient_only_when_rescaling(tiny_config):
  tiny_config.sila.num_heads = 3
  method = methods.create(tiny_config)
  scale = lambda rescale: float(method.model_inputs(  # noqa: E731
      {'rescale_backbone_grad': rescale, 'sila_weight': 0.5})['backbone_grad_scale'])
  assert scale(0.0) == 1.0
  assert scale(1.0) == pytest.approx(1 / 2.5)


class MainAndAuxiliary(methods.Method):
  """A method as a new module would define it: one MLP head beside the main one on the
  final features, trained with the main cross-entropy plus 0.3 times its own."""
  metric_names = ('loss_auxiliary',)

  def create_model(self, config, bn_axis_name):
    config = config.copy_and_resolve_references()
    config.sila.update(enabled=True, num_heads=1, head='mlp', attach='features')
    return model_lib.create_model(config, bn_axis_name=bn_axis_name)

  def loss(self, logits, branches, labels, settings):
    main, _ = losses.plain_loss(logits, labels)
    auxiliary, _ = losses.plain_loss(branches[0], labels)
    loss = main + 0.3 * auxiliary
    return loss, {'loss': loss, 'loss_main': main, 'loss_auxiliary': auxiliary}


@pytest.mark.slow
def test_a_method_added_as_one_class_trains_exports_and_evaluates(tiny_config, tmp_path,
                                                                 monkeypatch):
  monkeypatch.setitem(methods.METHODS, 'main_and_auxiliary', MainAndAuxiliary)
  tiny_config.method = 'main_and_auxiliary'
  workdir, export_dir = str(tmp_path / 'run'), str(tmp_path / 'export')
  result = train.train_and_evaluate(tiny_config, workdir)
  assert result['train']['loss_auxiliary'] > 0
  assert result['train']['loss'] == pytest.approx(
      result['train']['loss_main'] + 0.3 * result['train']['loss_auxiliary'], rel=1e-5)
  description = export.export(tiny_config, workdir, export_dir)
  assert description['num_params'] == plain_param_count(tiny_config)
  from_checkpoint = evaluate.evaluate_workdir(tiny_config, workdir)
  assert evaluate.evaluate_export(tiny_config, export_dir) == from_checkpoint
  assert from_checkpoint['accuracy'] == pytest.approx(result['val']['accuracy'])
