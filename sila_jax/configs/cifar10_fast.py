"""A fast GPU recipe: ResNet-20 + SiLa on the CIFAR-10 folder split, 20 epochs in bfloat16.

Batch 512 with the learning rate scaled linearly from 0.1 at 128; validation on the
class-balanced last 500 images of every class (cifar10_folder.py).
"""
from sila_jax.configs import cifar10_folder


def get_config():
  config = cifar10_folder.get_config()
  config.dtype = 'bfloat16'
  config.batch_size = 512
  config.eval_batch_size = 1000
  config.num_epochs = 20
  config.optimizer.learning_rate = 0.4
  config.optimizer.warmup_epochs = 1.0
  return config
