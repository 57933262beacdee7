"""experiments.planning: grid files into runs, and the runs that share a computation."""
import os

import pytest

from sila_jax.configs.grids import smoke
from sila_jax.errors import ConfigError
from sila_jax.experiments import planning


def test_runs_differing_only_in_run_fields_share_a_computation():
  grid = smoke.get_grid()
  grid['arms'] = {'plain': {'sila.weight': 0.0}, 'kl': {'sila.kl_weight': 1.0},
                  'scaled': {'loss_scale': 2.0}, 'joint': {'sila.variant': 'joint'}}
  planned = planning.plan(grid, {'num_train_steps': 5})
  groups = planning.group(planned, max_runs=4)
  assert [[(r.arm, r.seed) for r in g] for g in groups] == [
      [('plain', 0), ('plain', 1), ('kl', 0), ('kl', 1)], [('scaled', 0), ('scaled', 1)],
      [('joint', 0), ('joint', 1)]]
  config = planning.group_config(groups[0])
  assert config.num_runs == 4 and config.num_train_steps == 5
  assert config.runs.seed == (0, 1, 0, 1)
  assert config.runs.sila_weight == (0.0, 0.0, 1.0, 1.0)
  assert config.runs.sila_kl_weight == (0.0, 0.0, 1.0, 1.0)
  workdir = planning.group_workdir('out', groups[0])
  assert os.path.dirname(workdir) == os.path.join('out', 'work')
  assert workdir == planning.group_workdir('out', list(groups[0]))  # Named by its runs alone.
  assert workdir != planning.group_workdir('out', groups[0][:2])


def test_a_runs_identity_leaves_out_where_and_how_it_computes():
  run = planning.plan(smoke.get_grid(), {})[0]
  assert run.result_path == os.path.join('runs', 'plain', 'seed_0.json')
  moved = planning.plan(smoke.get_grid(), {'data_dir': '/elsewhere',
                                           'kernels.peer_conv': 'grouped'})[0]
  assert moved.digest == run.digest and len(run.digest) == 12
  assert planning.plan(smoke.get_grid(), {'num_train_steps': 3})[0].digest != run.digest


@pytest.mark.parametrize('overrides, message', [
    ({'sila.wieght': 1.0}, "Unknown config field 'sila.wieght'; did you mean 'sila.weight'"),
    ({'num_runs': 2}, 'The runner sets num_runs itself'),
    ({'runs.seed': (0, 1)}, 'The runner sets runs.seed itself'),
    ({'eval_every_steps': 0}, 'never validates'),
])
def test_bad_grids_and_overrides_are_one_line_errors(overrides, message):
  with pytest.raises(ConfigError, match=message):
    planning.plan(smoke.get_grid(), overrides)


@pytest.mark.parametrize('export_seeds', [(5,), 0, (True,)])
def test_export_seeds_must_be_seeds_of_the_grid(export_seeds):
  grid = {**smoke.get_grid(), 'export_seeds': export_seeds}
  with pytest.raises(ConfigError, match=r'^grid\.py: export_seeds must list seeds of the grid '
                     r'\(0, 1\); got'):
    planning.check_grid(grid, 'grid.py')
  assert planning.check_grid({**grid, 'export_seeds': (1,)}, 'grid.py')


def test_a_grid_files_mistake_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match='^No grid file'):
    planning.load_grid(str(tmp_path / 'nonesuch.py'))
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_grid():\n  return {}[0]\n')
  with pytest.raises(ConfigError, match=rf'^{broken}: KeyError: 0$'):
    planning.load_grid(str(broken))
  lacking = tmp_path / 'lacking.py'
  lacking.write_text("def get_grid():\n  return {'arms': {}}\n")
  with pytest.raises(ConfigError, match='a grid holds config, arms and seeds'):
    planning.load_grid(str(lacking))
