"""The compression claim (SILA.md): a half-width ResNet-20 trained with SiLa against the
half-width and the full-width plain ResNet-20."""
from sila_jax.configs.grids import recipe


def get_grid():
  return {
      'config': recipe.get_config(),
      'arms': {
          'plain_w1': {'sila.weight': 0.0},
          'plain_w0.5': {'sila.weight': 0.0, 'width': 0.5},
          'sila_w0.5': {'width': 0.5},
      },
      'seeds': recipe.SEEDS,
      'baselines': ('plain_w0.5', 'plain_w1'),
      'caption': 'Compression: half-width ResNet-20 with SiLa against half- and full-width '
                 'plain ResNet-20.',
  }
