"""Evaluation of the main branch only: {backbone, head} and their BatchNorm statistics."""
import json
import os
import re
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sila_jax import checkpoint
from sila_jax import input_pipeline
from sila_jax import model as model_lib
from sila_jax import parallel
from sila_jax.train_step import AXIS


def make_eval_step(model: model_lib.SilaClassifier):
  """Jitted (variables, batch) -> sums of loss, correct and count over real examples.

  batch: {'image': (B, H, W, 3), 'label': (B,), 'mask': (B,) bool}.
  """
  @jax.jit
  def eval_step(variables, batch):
    logits, _ = model.apply(variables, batch['image'], train=False)
    mask = batch['mask']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}
  return eval_step


def evaluate(eval_step, variables: dict[str, Any], batches: Iterable[dict[str, Any]],
             mesh: Mesh) -> dict[str, float]:
  """Accuracy, mean cross-entropy and example count over `batches`, split over `mesh`."""
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  sharding = NamedSharding(mesh, P(AXIS))
  totals = None
  for batch in batches:
    sums = eval_step(variables, parallel.shard_batch(batch, sharding))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('The evaluation split is empty.')
  totals = jax.device_get(totals)
  count = int(totals['count'])
  return {'accuracy': float(totals['correct']) / count, 'loss': float(totals['loss']) / count,
          'num_examples': count}


def split_filename(split: str) -> str:
  """'train[-500:]' -> 'eval_train_-500.json'."""
  return 'eval_' + re.sub(r'[^\w.-]+', '_', split).strip('_') + '.json'


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     split: str | None = None) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir` on `split` (default config.eval_split).

  Builds the plain model (no Siamese heads), restores only its parameters and writes
  <workdir>/eval_<split>.json with accuracy, loss, num_examples, num_params and step.
  """
  split = split or config.eval_split
  model = model_lib.create_model(config, main_branch_only=True)
  step, variables = checkpoint.restore_main_branch(
      checkpoint.create_manager(workdir, config.keep_checkpoints),
      model_lib.abstract_variables(model, config.image_size))
  data = input_pipeline.load_split(config, split, drop_remainder=False)
  local_batch = config.eval_batch_size // jax.process_count()
  mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
  result = evaluate(make_eval_step(model), variables,
                    input_pipeline.eval_batches(data, config, local_batch), mesh)
  result.update(split=split, step=step, num_params=model_lib.count_params(variables['params']))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, split_filename(split)), 'w') as f:
      json.dump(result, f, indent=2)
  return result
