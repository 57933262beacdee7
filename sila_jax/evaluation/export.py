"""Inference export: the main branch's variables plus the description of the plain model.

<export_dir>/variables.msgpack holds {'params', 'batch_stats'} of {backbone, head} only
(none of the method's branches, no optimizer state); <export_dir>/model.json holds the config
fields that rebuild the plain model and prepare its input, and a digest of the variables file.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import flax
import jax
import ml_collections

from sila_jax import config_checks
from sila_jax import methods
from sila_jax.configs import default
from sila_jax.errors import CheckpointError, ConfigError
from sila_jax.methods import peers
from sila_jax.models import model as model_lib
from sila_jax.training import checkpoint
from sila_jax.training import runs

VARIABLES = 'variables.msgpack'
DESCRIPTION = 'model.json'
# Everything the plain model and its input preparation depend on.
MODEL_FIELDS = ('model', 'width', 'dropout_rate', 'dynamic.num_kernels', 'num_classes',
                'image_size', 'normalize_mean', 'normalize_std', 'dtype')


@dataclasses.dataclass(frozen=True)
class Export:
  """An export read back: the plain model's config and variables, and how to apply them."""
  config: ml_collections.ConfigDict
  variables: dict[str, Any]
  step: int
  attention_temperature: float  # For dynamic convolutions; static models ignore it.


def export(config: ml_collections.ConfigDict, workdir: str, export_dir: str,
           which: str = checkpoint.LATEST, peer: int = 0, run: int = 0) -> dict[str, Any]:
  """Writes the main branch of `workdir`'s latest (or best) checkpoint to `export_dir`.

  One model ships alone: run `run` of a multi-run computation, peer `peer` of a DML run.
  The directory appears complete or not at all. Returns the description written.
  """
  config_checks.check_config(config, jax.device_count())
  num_peers = len(peers.peer_models(config))
  if not 0 <= peer < num_peers:
    raise ConfigError(f'peer={peer}, but the run has {num_peers} peer(s): 0..{num_peers - 1}.')
  if not 0 <= run < config.num_runs:
    raise ConfigError(f'run={run}, but the config has num_runs={config.num_runs}: runs '
                      f'0..{config.num_runs - 1}.')
  meta, variables = checkpoint.restore_variables(
      workdir, config, methods.create(config).deployable_abstract(), which)
  variables = peers.peer_variables(config, runs.take(variables, run), peer)
  peer_config = peers.peer_config(runs.run_config(config, run), peer)
  payload = flax.serialization.msgpack_serialize(variables)
  description = {
      'model': {field: config_checks.get_field(peer_config, field) for field in MODEL_FIELDS},
      'step': meta['step'], 'attention_temperature': meta['attention_temperature'],
      'checkpoint': os.path.join(os.path.abspath(workdir), checkpoint.DIRECTORIES[which]),
      'peer': peer,
      'run': run,
      'num_params': model_lib.count_params(variables['params']),
      'sha256': hashlib.sha256(payload).hexdigest()}
  if jax.process_index() > 0:  # Every process read the same checkpoint; process 0 writes.
    return description
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.export-', dir=parent)
  with open(os.path.join(staging, VARIABLES), 'wb') as f:
    f.write(payload)
  with open(os.path.join(staging, DESCRIPTION), 'w') as f:
    json.dump(description, f, indent=2)
  if os.path.exists(export_dir):
    shutil.rmtree(export_dir)
  os.rename(staging, export_dir)
  return description


def load_export(export_dir: str) -> Export:
  """Reads an export back and checks the variables against their digest.

  Its config is configs/default.py with the export's model fields and SiLa off (plain
  training); a field an older export lacks (such as `dtype`) keeps its default.
  """
  try:
    with open(os.path.join(export_dir, DESCRIPTION)) as f:
      description = json.load(f)
    with open(os.path.join(export_dir, VARIABLES), 'rb') as f:
      payload = f.read()
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{export_dir} is not a readable export: {e}') from e
  if hashlib.sha256(payload).hexdigest() != description['sha256']:
    raise CheckpointError(f'The export in {export_dir} is corrupt: {VARIABLES} does not '
                          'match its digest.')
  config = default.get_config()
  config.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v
                                     for k, v in description['model'].items()})
  config.sila.enabled = False  # Plain training's config: what ships, whatever trained it.
  return Export(config, flax.serialization.msgpack_restore(payload), description['step'],
                description['attention_temperature'])
