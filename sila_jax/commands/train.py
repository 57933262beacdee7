"""Train a SiLa model: sila-train --config=configs/cifar10.py --workdir=/tmp/run.

SIGTERM or a first Ctrl-C saves a checkpoint and stops (exit status 0, or 130 for Ctrl-C);
the same command resumes. A second Ctrl-C stops at once, and so does the first signal
before the first step (reading data, compiling), when there is nothing to save.
"""
import sys

from absl import flags
from ml_collections import config_flags

from sila_jax.commands import cli
from sila_jax.training import distributed
from sila_jax.training import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Configuration file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


def _main(argv):
  del argv
  distributed.initialize(_CONFIG.value.distributed)  # Before any device is touched.
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, exit_at_once=True)
  if result['status'] == 'complete':
    print(f'{_WORKDIR.value}: the run is already complete at step {result["step"]}; '
          'nothing was retrained.')
  elif result['status'] == 'stopped':
    print(f'{_WORKDIR.value}: stopped by {result["stopped_by"]} after saving step '
          f'{result["step"]}; run the same command to resume.')
    if result['stopped_by'] == 'Ctrl-C':
      sys.exit(cli.INTERRUPTED)


def main() -> None:
  """`sila-train` and `python train.py`."""
  cli.run_command(_main)


if __name__ == '__main__':
  main()
