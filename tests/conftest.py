"""Test set-up: 8 fake CPU devices (before JAX starts) and a small, fast configuration."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from configs import default  # noqa: E402

tf.config.set_visible_devices([], 'GPU')


@pytest.fixture
def tiny_config():
  """ResNet-20 at a quarter width, 16-image batches: the real code, quick to compile."""
  config = default.get_config()
  config.width = 0.25
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.shuffle_buffer = 64
  config.optimizer.warmup_epochs = 0.0
  return config


def test_eight_fake_devices():
  assert jax.device_count() == 8
