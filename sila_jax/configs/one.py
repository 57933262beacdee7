"""ResNet-20 trained with ONE (3 gated branches, T = 3) on TFDS CIFAR-10, at
configs/cifar10.py's recipe; other CIFAR ResNets by --config.model."""
from sila_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.method = 'one'
  return config
