"""The campaign's CPU check (bash experiments/campaign.sh --quick; the test suite runs it): two
tiny blocks of two arms x two seeds, a quarter-width ResNet-20 on the generated folder of
benchmarks/device_env.sh's quick mode (24 random JPEGs per class). Not evidence.

The second block trains long enough for a test to stop it with SIGTERM while it trains.
"""
from sila_jax.configs import cifar10_folder


def recipe(steps: int):
  """A quarter-width ResNet-20 trained `steps` steps of batch 16 on 20 images per class."""
  config = cifar10_folder.get_config()
  config.train_split = 'train[:-4]'
  config.eval_split = 'train[-4:]'
  config.width = 0.25
  config.dtype = 'float32'  # bfloat16 compiles and runs slower on a CPU.
  config.batch_size = 16
  config.eval_batch_size = 40
  config.num_train_steps = steps
  config.optimizer.warmup_epochs = 0.0
  config.log_every_steps = 2
  config.eval_every_steps = steps // 2
  config.checkpoint_every_steps = 10
  config.keep_checkpoints = 1
  config.sila.update(attach='features', weight=1.0, kl_weight=0.0)
  return config


def block(name: str, steps: int, export_seeds=()):
  return {'name': name, 'title': f'Quick campaign block {name} (not evidence)',
          'grid': {'config': recipe(steps),
                   'arms': {'plain': {'sila.weight': 0.0}, 'sila': {}},
                   'seeds': (0, 1),
                   'baselines': ('plain',),
                   'export_seeds': export_seeds,
                   'caption': f'Quick campaign, {steps} steps (not evidence).'}}


def get_campaign():
  return [block('first', 6, export_seeds=(0,)), block('second', 30)]
