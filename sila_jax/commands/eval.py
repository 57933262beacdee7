"""Evaluate the main branch of a run's checkpoint, or an export, on a split.

python eval.py --config=configs/cifar10.py --workdir=/tmp/run [--checkpoint=best]
python eval.py --config=configs/cifar10.py --export_dir=/tmp/run/export
"""
from absl import flags
from ml_collections import config_flags

from sila_jax.commands import cli
from sila_jax.evaluation import evaluate
from sila_jax.training import checkpoint
from sila_jax.training import distributed
from sila_jax.training import metrics

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Configuration file (its data '
                                          'fields; with --export_dir the model is the '
                                          "export's).", lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory holding the checkpoints.')
_CHECKPOINT = flags.DEFINE_enum('checkpoint', checkpoint.LATEST,
                                list(checkpoint.DIRECTORIES),
                                "Which checkpoint of --workdir: the latest or the best.")
_EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'An export (from export.py) to evaluate '
                                  'instead of a checkpoint.')
_SPLIT = flags.DEFINE_string('split', None, 'Split to evaluate; default config.eval_split.')
flags.mark_flags_as_required(['config'])
flags.mark_flags_as_mutual_exclusive(['workdir', 'export_dir'], required=True)


def _main(argv):
  del argv
  distributed.initialize(_CONFIG.value.distributed)  # Before any device is touched.
  if _EXPORT_DIR.value:
    result = evaluate.evaluate_export(_CONFIG.value, _EXPORT_DIR.value, _SPLIT.value)
  else:
    result = evaluate.evaluate_workdir(_CONFIG.value, _WORKDIR.value, _SPLIT.value,
                                       _CHECKPOINT.value)
  print(f"{result['split']}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
        f"examples {result['num_examples']}  parameters {result['num_params']}  "
        f"(step {result['step']})")
  accuracies = [(name, value) for name, value in
                ((metrics.parse(written), value) for written, value in result.items())
                if name.metric == 'accuracy' and name.prefix and name.run is None]
  for title, of_branch in (('DML', False), ('Branch', True)):
    shown = [f'{name.prefix} {value:.4f}' for name, value in accuracies
             if name.of_branch == of_branch]
    if shown:
      print(f'{title} accuracy: ' + '  '.join(shown))


def main() -> None:
  """`sila-eval` and `python eval.py`."""
  cli.run_command(_main)


if __name__ == '__main__':
  main()
