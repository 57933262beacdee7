"""Checkpoints written before a single model was one peer of the peer axis.

tests/fixtures/single_model_v1 was written by the code of commit 670266c: a SiLa ResNet-20/4
with one Siamese head, 3 classes and one run, checkpointed after 2 steps (checkpoints/2), and
that version's export of it (export/). Today's code reads the checkpoint in its own layout.
"""
import json
import os
import contextlib
import shutil

import chex
import jax
import pytest

from sila_jax.evaluation import export
from sila_jax.training import checkpoint
from sila_jax.training import metrics
from sila_jax.training import train
from tests.helpers import ROOT, make_tiny_config, setup

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'single_model_v1')


@pytest.fixture
def old_run(data_dir, tmp_path):
  """(config, a workdir holding a copy of the fixture's checkpoint)."""
  config = make_tiny_config(data_dir)
  config.update(model='resnet20', num_classes=3, num_train_steps=3, keep_checkpoints=1,
                eval_every_steps=0)
  config.sila.update(enabled=True, num_heads=1)
  workdir = str(tmp_path / 'run')
  shutil.copytree(os.path.join(FIXTURE, 'checkpoints'), os.path.join(workdir, 'checkpoints'))
  return config, workdir


def test_an_old_single_model_checkpoint_exports_what_its_version_exported(old_run, tmp_path):
  config, workdir = old_run
  description = export.export(config, workdir, str(tmp_path / 'export'))
  then = export.load_export(os.path.join(FIXTURE, 'export'))
  now = export.load_export(str(tmp_path / 'export'))
  chex.assert_trees_all_equal(now.variables, then.variables)
  with open(os.path.join(FIXTURE, 'export', export.DESCRIPTION)) as f:
    assert description['sha256'] == json.load(f)['sha256']  # The same bytes.
  assert description['step'] == 2


@pytest.mark.slow
def test_an_old_single_model_checkpoint_resumes_in_the_peer_layout(old_run):
  config, workdir = old_run
  _, _, _, state = setup(config)
  with contextlib.closing(checkpoint.create_manager(workdir)) as manager:
    restored = checkpoint.restore_newest_readable(manager, jax.eval_shape(lambda: state), config)
  assert int(restored.step) == 2
  chex.assert_trees_all_equal_shapes(restored, state)  # Runs, then one peer: (1, 1, ...).
  then = export.load_export(os.path.join(FIXTURE, 'export')).variables['params']
  chex.assert_trees_all_equal(
      jax.tree_util.tree_map(lambda x: x[0, 0], {k: restored.params[0][k]
                                                 for k in ('backbone', 'head')}), then)
  result = train.train_and_evaluate(config, workdir)
  assert result['status'] == 'trained' and result['step'] == 3
  assert [r['step'] for r in metrics.read(workdir, metrics.TRAIN)] == [3]  # From step 2 on.
