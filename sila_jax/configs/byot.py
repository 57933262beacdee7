"""ResNet-20 trained with Be Your Own Teacher (alpha 0.1, T = 3, feature weight 1e-6) on
TFDS CIFAR-10, at configs/cifar10.py's recipe; other CIFAR ResNets by --config.model."""
from sila_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.method = 'byot'
  return config
