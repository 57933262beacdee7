"""Export the main branch for inference: python export.py --config=... --workdir=/tmp/run.

A DML run exports one peer at a time: --peer=i (default 0); a multi-run workdir (num_runs R)
one run at a time: --run=r (default 0).

Writes <export_dir> (default <workdir>/export): variables.msgpack with the backbone's and
main head's parameters and BatchNorm statistics, and model.json describing the plain model.
"""
from absl import flags
from ml_collections import config_flags

from sila_jax.commands import cli
from sila_jax.evaluation import export
from sila_jax.training import checkpoint
from sila_jax.training import distributed

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Configuration file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory holding the checkpoints.')
_CHECKPOINT = flags.DEFINE_enum('checkpoint', checkpoint.LATEST,
                                list(checkpoint.DIRECTORIES),
                                'Which checkpoint to export: the latest or the best.')
_EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'Output directory; default '
                                  '<workdir>/export (DML peer i > 0: <workdir>/export_peer_<i>, '
                                  'run r > 0: <workdir>/export_run_<r>, both: '
                                  '..._run_<r>_peer_<i>).')
_PEER = flags.DEFINE_integer('peer', 0, 'DML runs: which peer to export (each ships alone).')
_RUN = flags.DEFINE_integer('run', 0, 'Multi-run workdirs: which run to export.')
flags.mark_flags_as_required(['config', 'workdir'])


def _main(argv):
  del argv
  distributed.initialize(_CONFIG.value.distributed)  # Before any device is touched.
  suffix = (f'_run_{_RUN.value}' if _RUN.value else '') + (
      f'_peer_{_PEER.value}' if _PEER.value else '')
  export_dir = _EXPORT_DIR.value or f'{_WORKDIR.value}/export{suffix}'
  description = export.export(_CONFIG.value, _WORKDIR.value, export_dir, _CHECKPOINT.value,
                              _PEER.value, _RUN.value)
  print(f"Exported step {description['step']} ({description['num_params']} parameters, "
        f'main branch only) to {export_dir}.')


def main() -> None:
  """`sila-export` and `python export.py`."""
  cli.run_command(_main)


if __name__ == '__main__':
  main()
