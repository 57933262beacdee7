"""Config validation: unknown fields with a suggestion, invalid values named, before compiling."""
import pytest

from sila_jax import config_checks
from sila_jax.errors import ConfigError


def test_default_config_passes(tiny_config):
  config_checks.check_config(tiny_config, num_devices=8)


def test_unknown_field_suggests_the_closest_one(tiny_config):
  tiny_config.unlock()
  tiny_config.sila.wieght = 2.0  # A typo in a config file adds a field silently.
  with pytest.raises(ConfigError, match=r"Unknown config field 'sila.wieght'; did you mean "
                                        r"'sila.weight'\?"):
    config_checks.check_config(tiny_config, num_devices=8)


def test_unknown_field_found_elsewhere_in_the_tree(tiny_config):
  tiny_config.unlock()
  tiny_config.learning_rate = 0.1  # It lives under optimizer.
  with pytest.raises(ConfigError, match="did you mean 'optimizer.learning_rate'"):
    config_checks.check_config(tiny_config, num_devices=8)


@pytest.mark.parametrize('path, value, message', [
    ('optimizer.learning_rate', 0.0, 'optimizer.learning_rate must be positive, got 0.0'),
    ('optimizer.learning_rate', -0.1, 'optimizer.learning_rate must be positive'),
    ('batch_size', 0, 'batch_size must be positive, got 0'),
    ('batch_size', 12, 'batch_size=12 is not divisible by the 8 devices'),
    ('eval_batch_size', 20, 'eval_batch_size=20 is not divisible by the 8 devices'),
    ('model', 'resnet21', "Unknown model 'resnet21'; choose one of .*resnet20"),
    ('dataset', 'imagenet', "Unknown dataset 'imagenet'; choose one of cifar10, cifar100, folder"),
    ('sila.variant', 'triple', "Unknown sila.variant 'triple'; choose one of twin, joint"),
    ('sila.head', 'conv', "Unknown sila.head 'conv'"),
    ('sila.attach', 'middle', 'sila.attach'),
    ('sila.attach', 'stage9', r"sila.attach='stage9', but resnet20 has stages 1..3"),
    ('optimizer.schedule', 'linear', "Unknown optimizer.schedule 'linear'"),
    ('parallel', 'pjit', "Unknown parallel 'pjit'"),
    ('label_smoothing', 1.0, r'label_smoothing must be in \[0, 1\)'),
    ('sila.weight', -1.0, 'sila.weight must not be negative'),
    ('keep_checkpoints', 0, 'keep_checkpoints must be positive'),
    ('dml.num_peers', 0, 'dml.num_peers must be positive, got 0'),
    ('dml.temperature', 0.0, 'dml.temperature must be positive'),
    ('dml.weight', -1.0, 'dml.weight must not be negative'),
    ('dml.models', ('resnet32', 'wrn16_4'),
     'dml.models names 2 models but dml.num_peers is 1; give one model per peer'),
    ('dml.models', ('resnet32', 'resnet33'), "Unknown model 'resnet33' in dml.models"),
    ('dtype', 'float16', r"^Unknown dtype 'float16'; choose one of float32, bfloat16\.$"),
    ('kernels.peer_conv', 'vmap',
     r"^Unknown kernels.peer_conv 'vmap'; choose one of auto, sliced, grouped\.$"),
    ('kernels.dynamic_conv', 'sliced',
     r"^Unknown kernels.dynamic_conv 'sliced'; choose one of auto, taps, grouped\.$"),
])
def test_invalid_values_are_named(tiny_config, path, value, message):
  *parents, leaf = path.split('.')
  node = tiny_config
  for key in parents:
    node = node[key]
  node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    config_checks.check_config(tiny_config, num_devices=8)


def test_every_problem_is_reported_at_once(tiny_config):
  tiny_config.batch_size = -8
  tiny_config.optimizer.learning_rate = -1.0
  with pytest.raises(ConfigError, match='learning_rate must be positive.*\n?.*batch_size|'
                                        'batch_size.*learning_rate'):
    config_checks.check_config(tiny_config, num_devices=8)
