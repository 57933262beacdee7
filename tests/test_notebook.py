"""notebooks/sila_colab.ipynb, every cell executed on CPU with a tiny config and data."""
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests.helpers import ROOT, make_folder, xla_flags
pytestmark = pytest.mark.slow  # Starts a kernel and trains in it.

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'sila_colab.ipynb')


def _outputs(cell) -> str:
  return ''.join(output.get('text', '') for output in cell.get('outputs', []))


def test_notebook_trains_evaluates_exports_and_draws(tmp_path):
  data_dir = make_folder(tmp_path / 'data', per_class=6)
  workdir = str(tmp_path / 'run')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  parameters = next(i for i, cell in enumerate(notebook.cells)
                    if 'parameters' in cell.metadata.get('tags', []))
  # What papermill would inject after the parameters cell: the tiny run.
  notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(
      f"DATA = 'folder'\nWORKDIR = {workdir!r}\nOVERRIDES = {{'data_dir': {data_dir!r}, "
      "'num_classes': 3, 'train_split': 'train[:-2]', 'eval_split': 'train[-2:]', "
      "'width': 0.25, 'batch_size': 8, 'eval_batch_size': 8, 'num_epochs': 2, "
      "'log_every_steps': 1}"))
  env = {**os.environ, 'PYTHONPATH': ROOT, 'XLA_FLAGS': xla_flags()}  # One CPU device, as on Colab.
  NotebookClient(notebook, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute(env=env)

  text = '\n'.join(_outputs(cell) for cell in notebook.cells)
  assert 'Pinned: jax==' in text and 'jaxlib==' in text
  assert 'on CPU: 1 x cpu' in text
  assert 'trained at step 2' in text  # 12 images in batches of 8: 1 step an epoch.
  assert "parameters at test time" in text and 'Exported step 2' in text
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['type'] for r in records] == ['train', 'validation'] * 2
  evaluation = json.load(open(os.path.join(workdir, 'eval_train_-2.json')))
  from_export = json.load(open(os.path.join(workdir, 'export', 'eval_train_-2.json')))
  assert from_export['accuracy'] == evaluation['accuracy']
  assert from_export['num_params'] == evaluation['num_params']
  images = [output for output in notebook.cells[-1].outputs
            if 'image/png' in output.get('data', {})]
  assert len(images) == 1
  with Image.open(os.path.join(workdir, 'curves.png')) as png:
    assert png.format == 'PNG' and png.width > 400
