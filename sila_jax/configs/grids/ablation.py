"""SiLa's variant, settled by measurement (../shared/SILA.md): which loss, lambda, KL, where the
head attaches, how many heads, against plain training and the step-size control.

In twin SiLa the Siamese head soon tracks the main head, so the backbone gets about
(1 + lambda) times the plain gradient. `plain_x2` is plain training with its loss scaled by
1 + lambda = 2 (for SGD with momentum, learning rate x 2 and weight decay / 2): if twin_1
beats plain but not plain_x2, the gain is the step size's, not the Siamese label's.
"""
from sila_jax.configs.grids import recipe


def get_grid():
  return {
      'config': recipe.get_config(),
      'arms': {
          'plain': {'sila.weight': 0.0},
          'plain_x2': {'sila.weight': 0.0, 'loss_scale': 2.0},
          'twin_0.5': {'sila.weight': 0.5},
          'twin_1': {'sila.weight': 1.0},
          'twin_2': {'sila.weight': 2.0},
          'twin_1_kl_1': {'sila.kl_weight': 1.0},
          'joint': {'sila.variant': 'joint'},
          'twin_1_stage2': {'sila.attach': 'stage2'},
          'twin_1_two_heads': {'sila.num_heads': 2},
      },
      'seeds': recipe.SEEDS,
      'baselines': ('plain', 'plain_x2'),
      'caption': 'Ablation: SiLa variants against plain training and the step-size control '
                 '(plain_x2: plain with its loss x 2).',
  }
