"""CIFAR-10 from an ImageFolder tree of JPEGs at /tmp/cifar10 (/tmp/cifar10/train/<class>/).

Holds out the last 500 images of every class for validation (45k / 5k, class-balanced).
"""
from sila_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'folder'
  config.data_dir = '/tmp/cifar10'
  config.train_split = 'train[:-500]'
  config.eval_split = 'train[-500:]'
  return config
