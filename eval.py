"""Evaluate the latest checkpoint's main branch: python eval.py --config=... --workdir=..."""
from absl import app
from absl import flags
from ml_collections import config_flags
import tensorflow as tf

from sila_jax import checkpoint
from sila_jax import evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Configuration file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory holding the checkpoints.')
_SPLIT = flags.DEFINE_string('split', None, 'Split to evaluate; default config.eval_split.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  tf.config.set_visible_devices([], 'GPU')
  checkpoint.quiet_orbax_logs()
  result = evaluate.evaluate_workdir(_CONFIG.value, _WORKDIR.value, _SPLIT.value)
  print(f"{result['split']}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
        f"examples {result['num_examples']}  parameters {result['num_params']}  "
        f"(checkpoint step {result['step']})")


if __name__ == '__main__':
  app.run(main)
