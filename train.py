"""Train a SiLa model: python train.py --config=configs/cifar10.py --workdir=/tmp/run."""
from absl import app
from absl import flags
from ml_collections import config_flags
import tensorflow as tf

from sila_jax import checkpoint
from sila_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Configuration file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  tf.config.set_visible_devices([], 'GPU')  # The input pipeline must leave accelerators to JAX.
  checkpoint.quiet_orbax_logs()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
