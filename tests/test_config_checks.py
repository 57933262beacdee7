"""Config validation: unknown fields with a suggestion, invalid values named, before compiling."""
import re

import pytest

from sila_jax import config_checks
from sila_jax.configs import default
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
    ('method', 'okd', r"^Unknown method 'okd'; choose one of plain, sila, one, clilr, byot\.$"),
    ('one.num_branches', 1, r'^one.num_branches must be in 2..8, got 1\.$'),
    ('clilr.beta', 1.5, r'^clilr.beta must be in \[0, 1\], got 1.5\.$'),
    ('byot.feature_weight', -1.0, r'^byot.feature_weight must not be negative, got -1.0\.$'),
    ('model', 'resnet21', "Unknown model 'resnet21'; choose one of .*resnet20"),
    ('dataset', 'imagenet', "Unknown dataset 'imagenet'; choose one of cifar10, cifar100, folder"),
    ('sila.variant', 'triple', "Unknown sila.variant 'triple'; choose one of twin, joint"),
    ('sila.head', 'conv', "Unknown sila.head 'conv'"),
    ('sila.attach', 'middle', 'sila.attach'),
    ('sila.attach', 'stage9', r"sila.attach='stage9', but resnet8 has stages 1..3"),
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
    ('normalize_std', (0.0, 0.25, 0.25),
     r'^normalize_std must be 3 numbers in \(0, 1\], .* got \(0.0, 0.25, 0.25\)\.$'),
    ('optimizer.momentum', float('inf'), r'^optimizer.momentum must be finite, got inf\.$'),
    ('runs.sila_weight', (-1.0,),
     r'^sila.weight must not be negative, got -1.0 in runs.sila_weight\.$'),
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


# The schema walk: every leaf field of configs/default.py is either given wrong values of its
# type (what `--config.<field>=<value>` can set) that check_config must refuse in one line
# naming the field, or listed below with the reason no such value exists before the data.
NAN, INF = float('nan'), float('inf')
WRONG_VALUES = {
    'dataset': ('imagenet', 'CIFAR10'),
    'num_classes': (0, -10),
    'image_size': (0, -32, 64),  # The default dataset, cifar10, is 32x32.
    'normalize_mean': ((), (0.5, 0.5), (0.5,) * 4, (123.7, 116.3, 103.5), (-0.1, 0.5, 0.5),
                       (NAN, 0.5, 0.5), ('0.5', 0.5, 0.5)),
    'normalize_std': ((), (0.25, 0.25), (0.25,) * 4, (0.0, 0.25, 0.25), (-0.2, 0.2, 0.2),
                      (58.4, 57.1, 57.4), (INF, 0.2, 0.2), (True, 0.2, 0.2)),
    'method': ('okd', 'SiLa', 'ONE', ''),
    'model': ('resnet21', 'ResNet20'),
    'width': (0.0, -1.0, 0.01),
    'dropout_rate': (-0.1, 1.0, 1.5),
    'dynamic.num_kernels': (0, -4),
    'dynamic.tau_start': (0.0, -30.0),
    'dynamic.tau_epochs': (-1.0,),
    'sila.num_heads': (0, -1, 65),  # 65: more than heads.MAX_SIAMESE_HEADS.
    'sila.head': ('conv', 'Twin'),
    'sila.attach': ('middle', 'stage0', 'stage²', 'stageX', 'stage9', 'stage-1', 'stage',
                    'stage 2', 'Features'),
    'sila.variant': ('triple', 'Twin'),
    'sila.weight': (-1.0,),
    'sila.kl_weight': (-0.5,),
    'sila.temperature': (0.0, -1.0),
    'label_smoothing': (-0.1, 1.0, 2.0),
    'loss_scale': (0.0, -1.0),
    'dml.num_peers': (0, -2),
    'dml.models': (('resnet33',), ('resnet32', 'wrn16_4'), ('',), ('stage2',)),
    'dml.temperature': (0.0, -1.0),
    'dml.weight': (-1.0,),
    'num_runs': (0, -1, 257),  # 257: more than runs.MAX_MODELS.
    'runs.seed': ((0, 1), (2**31,), (0.5,), ('0',)),
    'runs.sila_weight': ((1.0, 2.0), (-1.0,), (NAN,), (INF,), ('1',)),
    'runs.sila_kl_weight': ((0.0, 1.0), (-0.5,), (NAN,), (INF,), (None,)),
    'runs.dml_weight': ((1.0, 2.0), (-1.0,), (NAN,), (INF,)),
    'runs.label_smoothing': ((0.0, 0.1), (1.0,), (-0.1,), (NAN,)),
    'runs.loss_scale': ((1.0, 2.0), (0.0,), (-1.0,), (NAN,), (INF,)),
    'runs.learning_rate': ((0.1, 0.2), (0.0,), (-0.1,), (NAN,), (INF,)),
    'runs.weight_decay': ((5e-4, 0.0), (-1e-4,), (NAN,), (INF,)),
    'runs.rescale_backbone_grad': ((True, False), (1,), ('yes',)),
    'runs.one_temperature': ((3.0, 2.0), (0.0,), (-1.0,), (NAN,), (INF,)),
    'runs.clilr_beta': ((0.5, 0.7), (1.5,), (-0.1,), (NAN,)),
    'runs.clilr_temperature': ((2.0, 3.0), (0.0,), (-2.0,), (NAN,), (INF,)),
    'runs.byot_alpha': ((0.1, 0.2), (1.5,), (-0.1,), (NAN,)),
    'runs.byot_temperature': ((3.0, 2.0), (0.0,), (-3.0,), (NAN,), (INF,)),
    'runs.byot_feature_weight': ((1e-6, 0.0), (-1e-6,), (NAN,), (INF,)),
    'one.num_branches': (0, 1, 9),
    'one.temperature': (0.0, -1.0),
    'clilr.num_heads': (0, 1, 9),
    'clilr.beta': (-0.1, 1.5),
    'clilr.temperature': (0.0, -2.0),
    'byot.alpha': (-0.1, 1.5),
    'byot.temperature': (0.0, -3.0),
    'byot.feature_weight': (-1e-6,),
    'batch_size': (0, -128, 12),  # 12 images do not split over 8 devices.
    'num_epochs': (0, -1),
    'optimizer.learning_rate': (0.0, -0.1),
    'optimizer.momentum': (-0.1, 1.0, 9.0),
    'optimizer.weight_decay': (-5e-4,),
    'optimizer.schedule': ('linear', 'Cosine'),
    'optimizer.warmup_epochs': (-1.0,),
    'optimizer.lr_boundaries': ((0.75, 0.5), (0.5, 0.5), (0.5, 1.5), (0.0, 0.5), (-0.5,),
                                (1.0,), (50, 75), (NAN,), ('0.5',)),
    'optimizer.lr_decay_factor': (0.0, -0.1),
    'dtype': ('float16', 'fp32'),
    'kernels.peer_conv': ('vmap', 'Auto'),
    'kernels.dynamic_conv': ('sliced', 'Auto'),
    'parallel': ('pjit', 'pmap '),
    'distributed': ('yes', 'true'),
    'eval_batch_size': (0, -256, 20),
    'log_every_steps': (0, -1),
    'eval_every_steps': (-2, -100),
    'checkpoint_every_steps': (0, -1),
    'keep_checkpoints': (0, -1),
    'profile_steps': ('5', '3,2', '2,2', 'a,b', '-1,2', '1,2,3'),  # '' is valid: no trace.
    'seed': (2**31, -2**31 - 1),  # Seeds are int32 (runs.settings).
}
EMPTY_IS_VALID = {'profile_steps'}  # String fields for which '' means "none".
EVERY_VALUE_VALID = {
    'on_device': 'a bool; both keep the data somewhere that works',
    'sila.enabled': 'a bool; False is plain training',
    'sila.rescale_backbone_grad': 'a bool; only its pairing with the joint variant is refused '
                                  '(test_rescaling_is_refused_for_the_joint_variant)',
    'dml.independent_augment': 'a bool; either way is a valid recipe',
    'optimizer.nesterov': 'a bool; either way is SGD with momentum',
    'num_train_steps': 'an int; <= 0 means num_epochs of the training split',
}
CHECKED_WITH_THE_DATA = {  # input_pipeline raises DataError (tests/test_input_pipeline.py).
    'data_dir': 'a missing or empty directory shows only when the data is opened',
    'train_split': "the dataset's splits say which names and slices exist",
    'eval_split': "the dataset's splits say which names and slices exist",
}


def _typed_wrong_values(path, default_value):
  """The field's own wrong values and those wrong for any field of its type."""
  generic = {float: (NAN, INF), str: ('',)}.get(type(default_value), ())
  if path in EMPTY_IS_VALID:
    generic = ()
  return WRONG_VALUES[path] + generic


def _walk():
  """(path, value) for every wrong value of every field that has them."""
  config = default.get_config()
  return [(path, value) for path in config_checks.field_paths(config) if path in WRONG_VALUES
          for value in _typed_wrong_values(path, config_checks.get_field(config, path))]


def test_the_walk_covers_the_schema_with_values_of_each_fields_type():
  config = default.get_config()
  listed = [*WRONG_VALUES, *EVERY_VALUE_VALID, *CHECKED_WITH_THE_DATA]
  assert len(listed) == len(set(listed)), 'a field is listed twice'
  assert set(listed) == set(config_checks.field_paths(config)), (
      'decide for each new field: wrong values to refuse, or why none exists')
  for path, value in _walk():
    assert isinstance(value, type(config_checks.get_field(config, path))), (path, value)


@pytest.mark.parametrize('path, value', _walk(), ids=repr)
def test_every_wrong_value_is_named_in_one_line(path, value):
  config = default.get_config()
  config.update_from_flattened_dict({path: value})
  with pytest.raises(ConfigError) as raised:
    config_checks.check_config(config, num_devices=8)
  message = str(raised.value)
  assert '\n' not in message
  assert re.search(rf'(?<![\w.]){re.escape(path)}\b', message), message


def test_rescaling_is_refused_for_the_joint_variant(tiny_config):
  tiny_config.sila.update(variant='joint', rescale_backbone_grad=True)
  with pytest.raises(ConfigError, match="^sila.rescale_backbone_grad applies to the twin "
                                        "variant, not 'joint'"):
    config_checks.check_config(tiny_config, num_devices=8)
