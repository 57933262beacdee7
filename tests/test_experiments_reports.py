"""experiments.reports: summary.md's table and effects, the mean curves, and the files."""
import csv


from sila_jax.configs.grids import smoke
from sila_jax.experiments import plot
from sila_jax.experiments import reports
from sila_jax.experiments import statistics
from tests.helpers import grid_of, record, records_of

PNG = b'\x89PNG\r\n\x1a\n'


def test_no_effect_is_claimed_inside_the_interval():
  grid = grid_of(('plain', 'twin'), (0, 1, 2))
  rows = statistics.summarize(grid, records_of({'twin': (-0.01, -0.03, -0.02)},
                                               (0.5, 0.6, 0.7)))
  text = reports.markdown(grid, rows, 'Caption.')
  assert text.startswith('Caption.\n\n')
  assert '| twin | 3 | 58.00 ± 9.54 | 1.0000 | 2.0000 | -2.00 [-4.48, 0.48] |' in text
  assert '95 % t-interval in brackets' in text and 'diverged' not in text
  assert text.rstrip().endswith('Effects (95 % interval excludes 0):\n- none: no paired '
                                'difference is distinguishable from zero at n = 3')


def test_an_effect_is_called_only_where_its_interval_excludes_zero():
  grid = grid_of(('plain', 'behind', 'ahead', 'unclear'), (0, 1, 2, 3, 4))
  rows = statistics.summarize(grid, records_of({
      'behind': (-0.01, -0.03, -0.02, -0.02, -0.02), 'ahead': (0.01, 0.03, 0.02, 0.02, 0.02),
      'unclear': (0.05, -0.05, 0.01, -0.01, 0.0)}))
  # Deltas of std 0.7071 points over n = 5: t_{0.975, 4} = 2.7764 gives 2.00 ± 0.88.
  effects = reports.effects(grid, rows)
  assert effects == ['- behind is behind plain by 2.00 points [1.12, 2.88], n = 5',
                     '- ahead is ahead of plain by 2.00 points [1.12, 2.88], n = 5']
  text = reports.markdown(grid, rows, 'Caption.')
  assert '| -2.00 [-2.88, -1.12] |' in text and '\n'.join(effects) in text
  assert reports.effects({**grid, 'baselines': ()}, rows) == []  # Nothing compared.


def test_diverged_runs_get_a_column_and_one_seed_no_interval():
  grid = grid_of(('plain', 'twin', 'lone'), (0, 1, 2))
  made = records_of({'twin': (-0.01, -0.03, -0.02)}, (0.5, 0.6, 0.7))
  made[4] = record('twin', 1, float('nan'), diverged_step=7)
  made.append(record('lone', 2, 0.75))
  text = reports.markdown(grid, statistics.summarize(grid, made), 'Caption.')
  assert '| arm | n | diverged | val accuracy % |' in text
  assert '| twin | 2 | 1 | 58.50 ± 13.44 |' in text
  assert '| lone | 1 | 0 | 75.00 ± nan | 1.0000 | 2.0000 | 5.00 |' in text  # No interval.
  assert 'left out of n and of every mean' in text
  assert 'zero at n = 1, 2' in text


def test_the_curves_are_each_arms_mean_at_the_steps_all_its_runs_have():
  made = [record('plain', 0, 0.5), record('plain', 1, 0.7), record('twin', 0, 0.25)]
  made[1]['history']['train_loss_main'] = [[10, 1.0], [15, 0.5]]  # Step 5 missing.
  assert reports.mean_curves(made) == {
      'loss': {'plain train': ([10], [1.5]), 'twin train': ([5, 10], [2.5, 2.0])},
      'accuracy': {'plain validation': ([10], [0.6]), 'twin validation': ([10], [0.25])}}


def test_the_caption_names_the_budget_and_the_command():
  config = smoke.get_grid()['config']
  caption = reports.caption({'seeds': (0, 1)}, config, 24, 'the command', 'Title.')
  assert caption.startswith(f'Title.\n\nBudget: {reports.recipe(config, 24)}; seeds 0, 1; ')
  assert caption.endswith('Command: `the command`.')
  assert reports.recipe(config, 24).startswith(
      f'{config.model} at width {config.width:g}, 24 steps of batch {config.batch_size} ')


def test_write_gives_the_csvs_the_table_and_both_figures(tmp_path, monkeypatch):
  drawn = []
  draw = plot.draw
  monkeypatch.setattr(plot, 'draw', lambda data, out, **kw: drawn.append(data) or draw(
      data, out, **kw))
  grid = grid_of(('plain', 'twin'), (0, 1, 2))
  made = records_of({'twin': (-0.01, -0.03, -0.02)}, (0.5, 0.6, 0.7))
  made[4]['diverged_step'] = 7
  rows = reports.write(str(tmp_path), grid, made, 'Caption.')
  assert rows == statistics.summarize(grid, made)
  with open(tmp_path / 'runs.csv') as f:
    saved = list(csv.DictReader(f))
  assert [r['diverged_step'] for r in saved] == ['', '', '', '', '7', '']
  assert 'history' not in saved[0]
  with open(tmp_path / 'summary.csv') as f:
    assert [r['arm'] for r in csv.DictReader(f)] == ['plain', 'twin']
  assert (tmp_path / 'summary.md').read_text() == reports.markdown(grid, rows, 'Caption.')
  # sila-plot's drawing of the curves of the runs that did not diverge.
  assert drawn == [reports.mean_curves([r for r in made if r['diverged_step'] is None])]
  for image in ('accuracy.png', 'curves.png'):
    assert (tmp_path / image).read_bytes()[:8] == PNG
