"""Loss, accuracy and norm curves of training runs: `sila-plot <workdir> ...` (or
`python -m sila_jax.experiments.plot`) draws each workdir's metrics.jsonl into one PNG.

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
import sys
from typing import Sequence

from matplotlib.figure import Figure

from sila_jax.errors import DataError, UserError
from sila_jax.training import metrics

PANELS = ('loss', 'accuracy', 'norm')
TITLES = {'loss': "cross-entropy of the main head", 'accuracy': 'accuracy',
          'norm': 'global L2 norm (training)'}
SOLID = (metrics.TRAIN, 'grad_norm')  # The kinds of line drawn solid; the others dashed.
# The metrics of one run's (and one peer's) curves by record type: {type: {metric: panel}}.
# The loss is the main head's; not '<name>_std' or 'learning_rate'.
_CURVES = {metrics.TRAIN: {'loss_main': 'loss', 'accuracy': 'accuracy'},
           metrics.VALIDATION: {'loss': 'loss', 'accuracy': 'accuracy'}}
_NORMS = ('grad_norm', 'param_norm')  # Of one run, over all its peers.

Curves = dict[str, dict[str, tuple[list[int], list[float]]]]


def _of_peers(name: metrics.Name) -> bool:
  """Whether `name` is one peer's or the ensemble's, not the whole model's."""
  return name.peer is not None or name.ensemble


def _series(workdir: str | None, name: metrics.Name) -> str:
  """A line's series: the workdir (if several are drawn), then whose value `name` is."""
  return '/'.join(filter(None, (workdir, name.prefix)))


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
    named = [(r, written, metrics.parse(written)) for r in records for written in r]
    found = [(r, w, n) for r, w, n in named if n.metric in _CURVES.get(r['type'], ())]
    if not found:
      raise DataError(f'{path} has no loss or accuracy records.')
    # Only the most detailed series: each run's, not their mean; each peer's, not peer 0's.
    has_runs = any(n.run is not None for _, _, n in found)
    has_peers = any(_of_peers(n) for _, _, n in found)
    for record, written, n in found:
      if (n.run is not None) != has_runs or _of_peers(n) != has_peers:
        continue
      if n.branch == 0:  # ONE's, CL-ILR's branch 0 is the deployed model, drawn already.
        continue
      label = f"{_series(prefix, n)} {record['type']}".strip()
      panel = _CURVES[record['type']][n.metric]
      steps, values = data[panel].setdefault(label, ([], []))
      steps.append(record['step'])
      values.append(record[written])
    norms = [(r, w, n) for r, w, n in named
             if r['type'] == metrics.TRAIN and n.metric in _NORMS and not _of_peers(n)]
    has_runs = any(n.run is not None for _, _, n in norms)
    for record, written, n in norms:
      if (n.run is not None) == has_runs:
        label = f'{_series(prefix, n)} {n.metric}'.strip()
        steps, values = data.setdefault('norm', {}).setdefault(label, ([], []))
        steps.append(record['step'])
        values.append(record[written])
  return data


def draw(data: Curves, out: str, title: str | None = None) -> Figure:
  """Writes `data` (as `curves` returns it) to the PNG `out`: its PANELS side by side, step
  on x, under `title` if given; each series has one colour, train (and gradient norm) solid,
  validation (and parameter norm) dashed. Returns the figure."""
  series = list(dict.fromkeys(label.rpartition(' ')[0] for lines in data.values()
                              for label in lines))
  panels = [panel for panel in PANELS if panel in data]
  fig = Figure(figsize=(6 * len(panels), 4.5), layout='constrained')
  if title:
    fig.suptitle(title, fontsize='medium')
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
