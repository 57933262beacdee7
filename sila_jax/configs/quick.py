"""The whole pipeline in a few minutes on a laptop CPU: ResNet-20 + SiLa, 5,000 CIFAR-10
training images for 3 epochs (234 steps of 64), validated on 1,000 images after each epoch.

sila-train --config=quick --workdir=/tmp/quick          # CIFAR-10 from TFDS (downloads once)
sila-train --config=quick:folder --workdir=/tmp/quick   # the JPEG folder of cifar10_folder.py

It shows the pipeline working, not what SiLa achieves: expect about 40 % accuracy.
"""
from sila_jax.configs import cifar10_folder
from sila_jax.configs import default

DATA = ('tfds', 'folder')


def get_config(data: str = 'tfds'):
  if data not in DATA:
    raise ValueError(f'quick.py:{data}: choose the data with quick.py:tfds or quick.py:folder.')
  if data == 'folder':  # Slices within each class: 500 + 100 images of each of 10 classes.
    config = cifar10_folder.get_config()
    config.train_split, config.eval_split = 'train[:500]', 'train[-100:]'
  else:
    config = default.get_config()
    config.train_split, config.eval_split = 'train[:5000]', 'test[:1000]'
  config.num_epochs = 3
  config.batch_size = 64
  config.eval_batch_size = 200  # Divides by 1, 2, 4 and 8 devices.
  config.optimizer.learning_rate = 0.05
  config.optimizer.warmup_epochs = 0.5
  config.log_every_steps = 20
  config.checkpoint_every_steps = 100
  return config
