"""SiLa against and with Deep Mutual Learning, on a static and a dynamic network, and
beside its neighbours ONE, CL-ILR and BYOT.

Arms with sila.weight = 0 (twin loss, kl_weight 0) are the plain models (their Siamese
heads receive no gradient), so each pair below trains as one computation. DML runs report
peer 0's accuracy.
"""
from sila_jax.configs.grids import recipe


def get_grid():
  return {
      'config': recipe.get_config(),
      'arms': {
          'plain': {'sila.weight': 0.0},
          'sila': {},
          'dml': {'sila.weight': 0.0, 'dml.num_peers': 2},
          'sila_dml': {'dml.num_peers': 2},
          'dy_plain': {'model': 'dy_resnet20', 'sila.weight': 0.0},
          'dy_sila': {'model': 'dy_resnet20'},
          # SiLa's neighbours (sila_jax/methods/): their papers' defaults.
          'one': {'method': 'one'},
          'clilr': {'method': 'clilr'},
          'byot': {'method': 'byot'},
      },
      'seeds': recipe.SEEDS,
      'baselines': ('plain',),
      'caption': ('SiLa, DML (2 peers), SiLa + DML, DY-ResNet-20 with and without SiLa, and '
                  "SiLa's neighbours ONE (3 branches), CL-ILR (2 heads) and BYOT."),
  }
