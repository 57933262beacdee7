"""sila-plot: the curves read from metrics.jsonl, and the PNG drawn from exactly them."""
import os

import numpy as np
from PIL import Image
import pytest

from sila_jax.experiments import plot
from sila_jax.training import metrics
from sila_jax.training import runs


def _write(workdir, records):
  """Writes [(kind, step, {name: value})] to workdir's metrics.jsonl with the real writer."""
  writer = metrics.Writer(str(workdir), log=lambda line: None)
  for kind, step, values in records:
    writer.write(kind, step, values)
  writer.close()
  return str(workdir)


def _train(loss, accuracy):
  """A training record's figures: the curves' ('loss_main', 'accuracy') and the rest, which
  sila-plot leaves out ('loss' is the whole objective, not the main head's cross-entropy)."""
  return {'loss': loss, 'accuracy': accuracy, 'loss_main': loss / 2, 'learning_rate': 0.1,
          'images_per_sec': 900.0, 'input_wait': 0.01}


@pytest.fixture
def plain(tmp_path):
  """One run of one model: train at steps 1, 2, validation at step 2."""
  return _write(tmp_path / 'plain', [
      ('train', 1, _train(2.0, 0.1)), ('train', 2, _train(1.5, 0.3)),
      ('validation', 2, {'accuracy': 0.25, 'loss': 1.75, 'num_examples': 40})])


@pytest.fixture
def two_runs(tmp_path):
  """R = 2 runs, the records as runs.summarize makes them (means, '_std', 'run_<r>/...')."""
  return _write(tmp_path / 'runs', [
      ('train', 1, runs.summarize({'loss': [2.0, 2.5], 'accuracy': [0.1, 0.2],
                                   'loss_main': [1.0, 1.25]})),
      ('train', 2, runs.summarize({'loss': [1.0, 1.5], 'accuracy': [0.4, 0.5],
                                   'loss_main': [0.5, 0.75]})),
      ('validation', 2, {**runs.summarize({'accuracy': [0.3, 0.35], 'loss': [1.25, 1.375]}),
                         'num_examples': 40})])


@pytest.fixture
def dml(tmp_path):
  """K = 2 DML peers of one run; 'loss' / 'accuracy' of validation repeat peer 0."""
  def train(losses, accuracies):
    return {**_train(sum(losses), accuracies[0]),
            **{f'peer_{i}/loss': v for i, v in enumerate(losses)},
            **{f'peer_{i}/loss_main': v / 2 for i, v in enumerate(losses)},
            **{f'peer_{i}/accuracy': v for i, v in enumerate(accuracies)}}
  return _write(tmp_path / 'dml', [
      ('train', 1, train([2.0, 2.25], [0.125, 0.25])),
      ('train', 3, train([1.0, 1.25], [0.5, 0.625])),
      ('validation', 3, {'accuracy': 0.375, 'loss': 1.5, 'num_examples': 40,
                         'peer_0/accuracy': 0.375, 'peer_0/loss': 1.5,
                         'peer_1/accuracy': 0.25, 'peer_1/loss': 1.625,
                         'ensemble/accuracy': 0.5, 'ensemble/loss': 1.25})])


PLAIN = {'loss': {'train': ([1, 2], [1.0, 0.75]), 'validation': ([2], [1.75])},
         'accuracy': {'train': ([1, 2], [0.1, 0.3]), 'validation': ([2], [0.25])}}
TWO_RUNS = {
    'loss': {'run_0 train': ([1, 2], [1.0, 0.5]), 'run_1 train': ([1, 2], [1.25, 0.75]),
             'run_0 validation': ([2], [1.25]), 'run_1 validation': ([2], [1.375])},
    'accuracy': {'run_0 train': ([1, 2], [0.1, 0.4]), 'run_1 train': ([1, 2], [0.2, 0.5]),
                 'run_0 validation': ([2], [0.3]), 'run_1 validation': ([2], [0.35])}}
DML = {
    'loss': {'peer_0 train': ([1, 3], [1.0, 0.5]), 'peer_1 train': ([1, 3], [1.125, 0.625]),
             'peer_0 validation': ([3], [1.5]), 'peer_1 validation': ([3], [1.625]),
             'ensemble validation': ([3], [1.25])},
    'accuracy': {'peer_0 train': ([1, 3], [0.125, 0.5]), 'peer_1 train': ([1, 3], [0.25, 0.625]),
                 'peer_0 validation': ([3], [0.375]), 'peer_1 validation': ([3], [0.25]),
                 'ensemble validation': ([3], [0.5])}}


def _named(name, data):
  """`data` as one of several workdirs gives it: `name` leads each label's series."""
  def label(old):
    series, _, kind = old.rpartition(' ')
    return f"{'/'.join(filter(None, (name, series)))} {kind}"
  return {panel: {label(old): curve for old, curve in lines.items()}
          for panel, lines in data.items()}


def test_one_workdir_gives_its_most_detailed_series(plain, two_runs, dml):
  assert plot.curves([plain]) == PLAIN
  assert plot.curves([two_runs]) == TWO_RUNS
  assert plot.curves([dml]) == DML


def test_branches_are_series_of_their_own_and_branch_0_is_the_deployed_models(tmp_path):
  workdir = _write(tmp_path / 'one', [
      ('train', 1, _train(2.0, 0.1)),
      ('validation', 1, {'accuracy': 0.25, 'loss': 1.75, 'branch_0/accuracy': 0.25,
                         'branch_0/loss': 1.75, 'branch_1/accuracy': 0.2, 'branch_1/loss': 1.8,
                         'branch_ensemble/accuracy': 0.3, 'branch_ensemble/loss': 1.7})])
  assert plot.curves([workdir])['accuracy'] == {
      'train': ([1], [0.1]), 'validation': ([1], [0.25]), 'branch_1 validation': ([1], [0.2]),
      'branch_ensemble validation': ([1], [0.3])}


def test_several_workdirs_are_named_by_their_basenames(plain, two_runs, dml):
  data = plot.curves([plain, two_runs + os.sep, dml])
  expected = [_named('plain', PLAIN), _named('runs', TWO_RUNS), _named('dml', DML)]
  assert data == {panel: {k: v for e in expected for k, v in e[panel].items()}
                  for panel in ('loss', 'accuracy')}  # No norms in these records.
  assert 'plain train' in data['loss'] and 'dml/ensemble validation' in data['accuracy']


def test_draw_plots_exactly_the_curves(plain, two_runs, dml, tmp_path):
  data = plot.curves([plain, two_runs, dml])
  fig = plot.draw(data, str(tmp_path / 'curves.png'))
  for ax, panel in zip(fig.axes, plot.PANELS):
    assert ax.get_title() == plot.TITLES[panel] and ax.get_xlabel() == 'step'
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.get_lines()}
    assert drawn == data[panel]
    styles = {line.get_label(): (line.get_color(), line.get_linestyle())
              for line in ax.get_lines()}
    assert styles['runs/run_1 train'][1] == '-' and styles['runs/run_1 validation'][1] == '--'
    assert styles['runs/run_1 train'][0] == styles['runs/run_1 validation'][0]
    assert styles['runs/run_0 train'][0] != styles['runs/run_1 train'][0]
    assert len(ax.get_legend().get_texts()) == len(data[panel])


def test_main_writes_a_png(plain, two_runs, dml, tmp_path, capsys):
  plot.main([plain])
  with Image.open(os.path.join(plain, 'curves.png')) as image:
    assert image.format == 'PNG' and image.size == (1200, 450)
    # Not blank: the curves' colours are in it.
    assert len(np.unique(np.asarray(image.convert('RGB')).reshape(-1, 3), axis=0)) > 10
  out = tmp_path / 'figures' / 'all.png'
  plot.main([plain, two_runs, dml, '--out', str(out)])
  assert f'Wrote {out}.' in capsys.readouterr().out
  with Image.open(out) as image:
    assert image.format == 'PNG' and image.size == (1200, 450)


@pytest.mark.parametrize('make, message', [
    (lambda d: None, 'has no metrics.jsonl'),
    (lambda d: d.mkdir(), 'has no metrics.jsonl'),
    (lambda d: (d.mkdir(), (d / metrics.FILE).write_text('')), 'has no loss or accuracy'),
    (lambda d: _write(d, [('train', 1, {'learning_rate': 0.1})]), 'has no loss or accuracy'),
])
def test_a_bad_workdir_exits_with_one_line_and_writes_nothing(plain, tmp_path, make, message):
  bad = tmp_path / 'bad'
  make(bad)
  out = tmp_path / 'out.png'
  for argv in ([str(bad)], [plain, str(bad), '--out', str(out)]):
    with pytest.raises(SystemExit) as exit_info:
      plot.main(argv)
    error = str(exit_info.value.code)
    assert error.startswith('sila-plot: error: ') and message in error and '\n' not in error
  assert not out.exists() and not os.path.exists(os.path.join(plain, 'curves.png'))
  assert not (bad / 'curves.png').exists()


def test_workdirs_of_the_same_name_exit(plain, tmp_path):
  other = _write(tmp_path / 'other' / 'plain', [('train', 1, _train(1.0, 0.5))])
  with pytest.raises(SystemExit, match='sila-plot: error: Workdirs with the same name'):
    plot.main([plain, other])


def test_sila_plot_draws_the_norms_of_each_run_in_a_third_panel(tmp_path):
  def record(loss, grad_norms, param_norms):
    return runs.summarize({'loss_main': [loss, loss], 'accuracy': [0.5, 0.5],
                           'grad_norm': grad_norms, 'param_norm': param_norms})
  workdir = _write(tmp_path / 'two_runs', [('train', 1, record(2.0, [3.0, 4.0], [20.0, 21.0])),
                                           ('train', 2, record(1.0, [2.0, 1.0], [22.0, 23.0]))])
  data = plot.curves([workdir])
  assert data['norm'] == {'run_0 grad_norm': ([1, 2], [3.0, 2.0]),
                          'run_0 param_norm': ([1, 2], [20.0, 22.0]),
                          'run_1 grad_norm': ([1, 2], [4.0, 1.0]),
                          'run_1 param_norm': ([1, 2], [21.0, 23.0])}
  figure = plot.draw(data, str(tmp_path / 'curves.png'), title='two runs')
  assert [ax.get_title() for ax in figure.axes] == [plot.TITLES[p] for p in plot.PANELS]
  assert figure.get_suptitle() == 'two runs'
  assert figure.axes[2].get_yscale() == 'log'
  # Records written before the norms were: two panels, as before.
  old = _write(tmp_path / 'old', [('train', 1, {'loss_main': 1.0, 'accuracy': 0.5})])
  assert 'norm' not in plot.curves([old])
  assert len(plot.draw(plot.curves([old]), str(tmp_path / 'old.png')).axes) == 2
