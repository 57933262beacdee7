"""ResNet-20 with one twin Siamese head on TFDS CIFAR-10, 200 epochs."""
from sila_jax.configs import default


def get_config():
  return default.get_config()
