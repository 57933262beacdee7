"""Evaluation of the main branch, {backbone, head} and their BatchNorm statistics, and of the
branches of a method that scores them (ONE's and CL-ILR's, methods.Method.predictions).

Variables carry the leading run axis of sila_jax/training/runs.py (an export is one run of one);
every run is evaluated and reported, and the means over runs lead the results.
"""
import json
import os
import re
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sila_jax import config_checks
from sila_jax import methods
from sila_jax.data import input_pipeline
from sila_jax.evaluation import export as export_lib
from sila_jax.methods import peers
from sila_jax.models import model as model_lib
from sila_jax.training import checkpoint
from sila_jax.training import metrics
from sila_jax.training import parallel
from sila_jax.training import progress
from sila_jax.training import runs
from sila_jax.training.parallel import AXIS


def make_eval_step(method: methods.Method):
  """Jitted (variables, batch, attention_temperature) -> sums over real examples: 'count',
  and 'loss' and 'correct' of peer 0 (the deployed model), and of each part method.predictions
  scores under its key: each peer under metrics.PEERS (K,), the ensemble under
  metrics.ENSEMBLE, each branch under metrics.BRANCHES (K, m), ...

  variables: method.evaluated's; batch: {'image': (B, H, W, 3), 'label': (B,), 'mask': (B,)
  bool}; attention_temperature: the attention temperature of dynamic convolutions (ignored
  by static models).
  """
  @jax.jit
  def eval_step(variables, batch, attention_temperature):
    predictions = method.predictions(variables, batch['image'], attention_temperature)
    mask, labels = batch['mask'], batch['label']

    def sums(scores):  # (..., B, C) -> {'loss': (...), 'correct': (...)}
      nll = optax.softmax_cross_entropy_with_integer_labels(
          scores, jnp.broadcast_to(labels, scores.shape[:-1]))
      correct = jnp.argmax(scores, -1) == labels
      return {'loss': jnp.sum(nll * mask, axis=-1), 'correct': jnp.sum(correct * mask, axis=-1)}
    outputs = {part: sums(scores) for part, scores in predictions.items()}
    peer_sums = outputs[metrics.PEERS]
    return {'count': jnp.sum(mask), 'loss': peer_sums['loss'][0],
            'correct': peer_sums['correct'][0], **outputs}
  return eval_step


class EvalBatches:
  """Batches from `input_pipeline.load_eval_shard` (leading batch axis), iterated as global
  batches split over `mesh`: put on the devices once (`on_device`), or one at a time."""

  def __init__(self, batches: dict[str, np.ndarray], mesh: Mesh, on_device: bool):
    self._host = batches
    self._sharding = NamedSharding(mesh, P(AXIS))
    self._resident = (parallel.shard_batch(batches, NamedSharding(mesh, P(None, AXIS)))
                      if on_device else None)

  def __len__(self) -> int:
    return len(self._host['label'])

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    for i in range(len(self._host['label'])):
      if self._resident is None:
        yield parallel.shard_batch({k: v[i] for k, v in self._host.items()}, self._sharding)
      else:
        yield {k: v[i] for k, v in self._resident.items()}


def evaluate(eval_step, variables: dict[str, Any], batches: Iterable[dict[str, Any]],
             mesh: Mesh, attention_temperature: float = 1.0,
             diverged_steps: Any = None) -> dict[str, float]:
  """Means over `batches` (global arrays split over `mesh`) of eval_step's per-run sums (R,),
  and the example count: 'correct' sums become accuracies ('peer_0/accuracy'), named by
  metrics.flatten and summarised over runs by `runs.summarize` (with the runs'
  `diverged_steps`, if given)."""
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  totals = None
  for batch in batches:
    sums = eval_step(variables, batch, attention_temperature)
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('The evaluation split is empty.')
  totals = metrics.flatten(jax.device_get(totals))
  count = int(totals.pop('count')[0])
  means = {name.replace('correct', 'accuracy'): np.asarray(total) / count
           for name, total in totals.items()}
  return {**runs.summarize(means, diverged_steps), 'num_examples': count}


def split_filename(split: str, prefix: str = 'eval') -> str:
  """'train[-500:]' -> 'eval_train_-500.json'."""
  return prefix + '_' + re.sub(r'[^\w.-]+', '_', split).strip('_') + '.json'


def make_main_branch_eval_step(method: methods.Method):
  """The eval step of the method's evaluated models, every peer's, of every run (variables
  (R, ...), sums (R, ...)), on uint8 images normalised as its config says."""
  config = method.config
  eval_step = make_eval_step(method)
  every_run = jax.vmap(eval_step, in_axes=(0, None, None))

  @jax.jit
  def on_uint8_images(variables, batch, attention_temperature):
    batch = {**batch, 'image': input_pipeline.normalize(batch['image'], config)}
    return every_run(variables, batch, attention_temperature)
  return on_uint8_images


def deployable_params(method: methods.Method, variables: dict[str, Any]) -> int:
  """Parameters of the model that ships: what run 0 (its peer 0 in a DML run) deploys;
  `variables` carry the run axis."""
  variables = peers.peer_variables(method.config, method.deployable(runs.take(variables, 0)), 0)
  return model_lib.count_params(variables['params'])


class Evaluator:
  """Validation on one split, as big_vision's evaluators: the data, its placement on the
  devices and the jitted step are built once; `evaluate` scores variables.

  Training and eval.py use the same one. config: the model (or DML peers) and the data.
  """

  def __init__(self, config: ml_collections.ConfigDict, split: str,
               devices: list[jax.Device] | None = None):
    devices = jax.devices() if devices is None else devices
    self.split = split
    self._mesh = parallel.data_mesh(devices)
    data = input_pipeline.load_eval_shard(config, split,
                                          config.eval_batch_size // jax.process_count())
    self._batches = EvalBatches(data, self._mesh, config.on_device)
    self.method = methods.create(config)
    self._step = make_main_branch_eval_step(self.method)

  def evaluate(self, variables: dict[str, Any], attention_temperature: float = 1.0,
          diverged_steps: Any = None) -> dict[str, float]:
    """`evaluate`'s metrics of `variables` ({'params', 'batch_stats'} with the run axis; what
    the method does not evaluate is left out) on the split."""
    with progress.Progress(f'eval {self.split}', len(self._batches), unit='batch',
                           leave=False) as bar:
      return evaluate(self._step, self.method.evaluated(variables), bar.track(self._batches),
                      self._mesh, attention_temperature, diverged_steps)


def _evaluate_and_write(config: ml_collections.ConfigDict, split: str,
                        variables: dict[str, Any], attention_temperature: float, step: int,
                        path: str, diverged_steps: Any = None) -> dict[str, Any]:
  """The Evaluator's metrics of `variables` (run axis first) on `split`, with split,
  num_params and step; process 0 writes them to `path`, whole or not at all."""
  evaluator = Evaluator(config, split)
  result = evaluator.evaluate(variables, attention_temperature, diverged_steps)
  result.update(split=split, num_params=deployable_params(evaluator.method, variables),
                step=step)
  if jax.process_index() == 0:
    metrics.write_atomically(path, json.dumps(result, indent=2))
  return result


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, split: str | None = None,
                     which: str = checkpoint.LATEST) -> dict[str, Any]:
  """Evaluates `workdir`'s latest (or, which='best', best) checkpoint on `split`.

  Restores only what the method evaluates (the plain model's variables; ONE's and CL-ILR's
  branches too) and writes <workdir>/eval_<split>.json (best: best_<split>.json) with
  accuracy, loss, num_examples, num_params and step. A DML run adds peer_<i>/accuracy,
  peer_<i>/loss and ensemble/accuracy, ensemble/loss; ONE and CL-ILR add branch_<j>/... of
  every branch (branch 0 is the deployed one) and branch_ensemble/...; accuracy and loss are
  the deployed model's (peer 0's branch 0), num_params one peer's (metrics.flatten names
  them).
  Several runs report every metric's mean over runs under its name, its sample std as
  <metric>_std and each run's as run_<r>/<metric>; runs that diverged (train_step) are left
  out of the means, and run_<r>/diverged_step gives the step (0: none). `split` defaults to
  config.eval_split.
  """
  config_checks.check_config(config, jax.device_count())
  split = split or config.eval_split
  meta, variables = checkpoint.restore_variables(
      workdir, config, methods.create(config).evaluated_abstract(), which)
  return _evaluate_and_write(config, split, variables, meta['attention_temperature'],
                             meta['step'], os.path.join(workdir, split_filename(
                                 split, 'best' if which == checkpoint.BEST else 'eval')),
                             meta.get('diverged_steps'))


def evaluate_export(config: ml_collections.ConfigDict, export_dir: str,
                    split: str | None = None) -> dict[str, Any]:
  """Evaluates an export on `split` of `config`'s data; the model comes from the export, a
  plain classifier.

  Writes <export_dir>/eval_<split>.json like `evaluate_workdir`.
  """
  config_checks.check_config(config, jax.device_count())
  split = split or config.eval_split
  exported = export_lib.load_export(export_dir)
  data_config = peers.peer_config(config, 0)  # The data, prepared as the model expects.
  data_config.update_from_flattened_dict(
      {field: config_checks.get_field(exported.config, field) for field in export_lib.MODEL_FIELDS})
  data_config.method = 'plain'  # What an export holds, whatever trained it.
  one_run = jax.tree_util.tree_map(
      lambda x: x[None], {c: peers.one_peer(tree) for c, tree in exported.variables.items()})
  return _evaluate_and_write(data_config, split, one_run, exported.attention_temperature,
                             exported.step, os.path.join(export_dir, split_filename(split)))
