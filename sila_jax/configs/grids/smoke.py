"""The experiment runner's smoke test: 2 arms x 2 seeds, 24 steps of a quarter-width ResNet-20.

Not evidence. The two arms differ in the loss's structure, so they train as two computations
of two runs each: python -m sila_jax.experiments --grid=configs/grids/smoke.py --out=/tmp/smoke
"""
from sila_jax.configs import cifar10_folder


def get_grid():
  config = cifar10_folder.get_config()
  config.width = 0.25
  config.batch_size = 32
  config.eval_batch_size = 100
  config.num_train_steps = 24
  config.optimizer.warmup_epochs = 0.0
  config.log_every_steps = 4
  config.eval_every_steps = 12
  config.checkpoint_every_steps = 4
  return {
      'config': config,
      'arms': {'plain': {'sila.weight': 0.0}, 'sila_joint': {'sila.variant': 'joint'}},
      'seeds': (0, 1),
      'baselines': ('plain',),
      'caption': 'Smoke test of the experiment runner (not evidence).',
  }
