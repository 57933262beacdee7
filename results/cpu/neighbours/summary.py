"""Writes summary.md beside this file: each method's validation figures, from the files run.sh
copied (eval_checkpoint.json, eval_export.json, export_model.json)."""
import json
import os

from sila_jax.training import metrics

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = {'one': 'ONE', 'clilr': 'CL-ILR', 'byot': 'BYOT'}
# Columns for the branches' accuracies; branch 0's is the checkpoint's own.
BRANCHES = {'branch_1': metrics.name('accuracy', branch=1),
            'branch_2': metrics.name('accuracy', branch=2),
            'branch_ensemble': metrics.name('accuracy', branch_ensemble=True)}


def read(method: str, name: str) -> dict:
  with open(os.path.join(HERE, method, name)) as f:
    return json.load(f)


def row(method: str) -> str:
  checkpoint, exported = read(method, 'eval_checkpoint.json'), read(method, 'eval_export.json')
  branches = [f'{checkpoint[key]:.3f}' if key in checkpoint else '–' for key in BRANCHES.values()]
  cells = [METHODS[method], f'{checkpoint["accuracy"]:.3f}', f'{exported["accuracy"]:.3f}',
           f'{checkpoint["loss"]:.4f}', *branches,
           f'{read(method, "export_model.json")["num_params"]:,}']
  return '| ' + ' | '.join(cells) + ' |'


def main():
  header = ['method', 'accuracy (checkpoint)', 'accuracy (export)', 'loss', *BRANCHES,
            'parameters at test time']
  lines = ['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|',
           *(row(m) for m in METHODS)]
  with open(os.path.join(HERE, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
