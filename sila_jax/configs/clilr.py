"""ResNet-20 trained with collaborative learning and backpropagation rescaling (CL-ILR: 2
heads, beta 0.5, T = 2) on TFDS CIFAR-10, at configs/cifar10.py's recipe; other CIFAR
ResNets by --config.model."""
from sila_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.method = 'clilr'
  return config
