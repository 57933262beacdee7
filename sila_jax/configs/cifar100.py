"""ResNet-20 with one twin Siamese head on TFDS CIFAR-100, 200 epochs."""
from sila_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'cifar100'
  config.num_classes = 100
  config.normalize_mean = (0.5071, 0.4865, 0.4409)
  config.normalize_std = (0.2673, 0.2564, 0.2762)
  return config
