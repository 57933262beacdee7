"""Loss, accuracy and norm curves of training runs: `python -m sila_jax.plot <workdir> ...`
(or `sila-plot`) draws each workdir's metrics.jsonl into one PNG.

One line per run, train solid and validation dashed in the run's colour: a workdir of
R > 1 runs gives its runs' own series ('run_<r>/...', not the mean), a DML workdir its
peers' ('peer_<i>/...') and the ensemble's validation. The loss is the main head's
cross-entropy, in training ('loss_main') as in validation: the training objective adds the
Siamese heads', KL and mimicry terms, which validation does not have. Where the training
records hold them, a third panel draws the global norms of the gradient (solid) and of the
parameters (dashed), on a log scale.
"""
import argparse
import os
import re
import sys
from typing import Sequence

from matplotlib.figure import Figure

from sila_jax import metrics
from sila_jax import runs
from sila_jax.errors import DataError, UserError

PANELS = ('loss', 'accuracy', 'norm')
TITLES = {'loss': "cross-entropy of the main head", 'accuracy': 'accuracy',
          'norm': 'global L2 norm (training)'}
SOLID = (metrics.TRAIN, 'grad_norm')  # The kinds of line drawn solid; the others dashed.
# The names of one run's (and one peer's) curve: 'loss_main' (training) or 'loss'
# (validation), 'peer_1/accuracy', 'run_2/ensemble/loss', ...; not '<name>_std' or
# 'learning_rate'.
_CURVE = re.compile(rf'(?:(?P<run>{runs.RUN_PREFIX}\d+)/)?(?:(?P<peer>peer_\d+|ensemble)/)?'
                    r'(?:(?P<loss>loss)|accuracy)(?P<main>_main)?')
# One run's norm: 'grad_norm', 'run_1/param_norm' (over all its peers).
_NORM = re.compile(rf'(?:(?P<run>{runs.RUN_PREFIX}\d+)/)?(?P<norm>grad_norm|param_norm)')

Curves = dict[str, dict[str, tuple[list[int], list[float]]]]


def curves(workdirs: Sequence[str]) -> Curves:
  """{panel in PANELS: {label: (steps, values)}}: int steps and float values, two lists of
  one length in the order of the workdir's records; 'norm' only where a training record
  holds norms.

  A label is '<series> train' or '<series> validation' ('<series> grad_norm' or
  '<series> param_norm' in 'norm'); the series names the workdir (basename), the run and
  the peer only where there are several ('b/run_1/peer_0'), so with one workdir of one run
  of one model the labels are 'train' and 'validation'.
  Raises DataError when a workdir has no metrics.jsonl or no loss or accuracy in it, or when
  two workdirs share a basename.
  """
  names = [os.path.basename(os.path.normpath(workdir)) for workdir in workdirs]
  if len(set(names)) < len(names):
    raise DataError(f'Workdirs with the same name would share a label: {", ".join(workdirs)}.')
  data: Curves = {'loss': {}, 'accuracy': {}}
  for workdir, name in zip(workdirs, names):
    prefix = name if len(workdirs) > 1 else None
    path = os.path.join(workdir, metrics.FILE)
    if not os.path.exists(path):
      raise DataError(f'{workdir} has no {metrics.FILE}: not the workdir of a training run.')
    records = metrics.read(workdir)
    found = [(r, m) for r in records for m in map(_CURVE.fullmatch, r)
             if m and bool(m['main']) == (bool(m['loss']) and r['type'] == metrics.TRAIN)]
    if not found:
      raise DataError(f'{path} has no loss or accuracy records.')
    # Only the most detailed series: each run's, not their mean; each peer's, not peer 0's.
    has_runs = any(m['run'] for _, m in found)
    has_peers = any(m['peer'] for _, m in found)
    for record, m in found:
      if bool(m['run']) != has_runs or bool(m['peer']) != has_peers:
        continue
      series = '/'.join(filter(None, (prefix, m['run'], m['peer'])))
      label = f"{series} {record['type']}".strip()
      steps, values = data['loss' if m['loss'] else 'accuracy'].setdefault(label, ([], []))
      steps.append(record['step'])
      values.append(record[m.string])
    norms = [(r, m) for r in records if r['type'] == metrics.TRAIN
             for m in map(_NORM.fullmatch, r) if m]
    has_runs = any(m['run'] for _, m in norms)
    for record, m in norms:
      if bool(m['run']) == has_runs:
        label = f"{'/'.join(filter(None, (prefix, m['run'])))} {m['norm']}".strip()
        steps, values = data.setdefault('norm', {}).setdefault(label, ([], []))
        steps.append(record['step'])
        values.append(record[m.string])
  return data


def draw(data: Curves, out: str) -> Figure:
  """Writes `data` (as `curves` returns it) to the PNG `out`: its PANELS side by side, step
  on x; each series has one colour, train (and gradient norm) solid, validation (and
  parameter norm) dashed. Returns the figure."""
  series = list(dict.fromkeys(label.rpartition(' ')[0] for lines in data.values()
                              for label in lines))
  panels = [panel for panel in PANELS if panel in data]
  fig = Figure(figsize=(6 * len(panels), 4.5), layout='constrained')
  for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
    for label, (steps, values) in data[panel].items():
      name, _, kind = label.rpartition(' ')
      ax.plot(steps, values, color=f'C{series.index(name) % 10}',
              linestyle='-' if kind in SOLID else '--',
              marker='.' if len(steps) < 20 else None, label=label)
    ax.set(xlabel='step', ylabel=panel, title=TITLES[panel],
           yscale='log' if panel == 'norm' else 'linear')
    ax.legend(fontsize='small')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=100)
  return fig


def main(argv: Sequence[str] | None = None) -> None:
  """sila-plot <workdir> [<workdir> ...] [--out PNG]; a bad workdir exits with one line."""
  parser = argparse.ArgumentParser(
      prog='sila-plot',
      description='Draws the loss, accuracy and norm curves of training runs.')
  parser.add_argument('workdirs', nargs='+', metavar='workdir',
                      help='a training run\'s workdir (holding metrics.jsonl)')
  parser.add_argument('--out', help='the PNG to write (default: <first workdir>/curves.png)')
  args = parser.parse_args(argv)
  try:
    data = curves(args.workdirs)
  except UserError as e:
    sys.exit(f'sila-plot: error: {e}')
  out = args.out or os.path.join(args.workdirs[0], 'curves.png')
  draw(data, out)
  print(f'Wrote {out}.')


if __name__ == '__main__':
  main()
