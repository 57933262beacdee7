"""Test set-up: 8 fake CPU devices (before JAX starts) and a small, fast configuration."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8').strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from sila_jax.configs import default  # noqa: E402
from tests.folders import make_folder  # noqa: E402


@pytest.fixture(scope='session')
def ten_class_folder(tmp_path_factory):
  """An ImageFolder tree of 10 classes x 4 random 32x32 JPEGs (40 images)."""
  return make_folder(tmp_path_factory.mktemp('ten_classes'), per_class=4,
                     classes=[f'class_{i}' for i in range(10)])


@pytest.fixture
def tiny_config(ten_class_folder):
  """ResNet-20 at a quarter width, 16-image batches on 40 images: the real code, quick to
  compile. Training and validation both read all 40 images."""
  config = default.get_config()
  config.update(dataset='folder', data_dir=ten_class_folder, train_split='train',
                eval_split='train')
  config.width = 0.25
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.optimizer.warmup_epochs = 0.0
  return config


def test_eight_fake_devices():
  assert jax.device_count() == 8
