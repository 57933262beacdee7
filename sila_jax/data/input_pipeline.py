"""Input: decoded splits as uint8 arrays; batches drawn and augmented inside the train step.

Training reads one even shard of the split per device (strided: shard i of D holds examples
i, i + D, ...), which run r (sila_jax/training/runs.py; config.num_runs runs) streams with
the seed `seed_r + i`. The n-th example of a shard's stream is example
`order_e[n mod s]` of the shard (s its size, e = n // s its epoch, order_e a permutation
drawn from (seed, e)), cropped and flipped with a key drawn from (seed, n). A step's batch
is a pure function of (seed, shard, step): resuming needs nothing but the step.

With `config.on_device` the shards stay on their devices and the step draws its own batch
(`device_input_step`); otherwise the host gathers each step's uint8 batch from host memory
(`host_batches`) and the step augments it (`host_input_step`). Both give the same batches.
Evaluation reads one strided shard of the split per process and visits every example once,
padding the last batch and marking real examples in `mask`.
"""
import dataclasses
import functools
import itertools
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sila_jax.data import folder_data
from sila_jax.errors import DataError
from sila_jax.training import distributed

DATASETS = ('cifar10', 'cifar100', 'folder')
PAD = 4  # Pixels of zero padding before the random crop (the standard CIFAR recipe).
# Independent key streams derived from a shard's seed.
_ORDER, _AUGMENT = 0, 1


@dataclasses.dataclass(frozen=True)
class Examples:
  """Decoded examples: images uint8 (n, H, W, 3), labels int32 (n,)."""
  images: np.ndarray
  labels: np.ndarray


def open_source(config: ml_collections.ConfigDict, split: str):
  """`split` of config's dataset as a source: num_examples, num_classes, read(indices)."""
  if config.dataset == 'folder':
    return folder_data.FolderSource(config.data_dir, split, config.image_size)
  if config.dataset in DATASETS:
    from sila_jax.data import tfds_data  # pylint: disable=g-import-not-at-top  # TFDS only if used.
    return tfds_data.open_split(config.dataset, config.data_dir, split)
  raise DataError(f'Unknown dataset {config.dataset!r}; choose one of {DATASETS}.')


def _read(source, indices: np.ndarray, num_classes: int, split: str) -> Examples:
  """The examples of `source` at `indices`, once the class count is known to match."""
  if source.num_classes != num_classes:
    raise DataError(f'num_classes={num_classes} but split {split!r} has {source.num_classes} '
                    f'classes (labels 0..{source.num_classes - 1}); set '
                    f'num_classes={source.num_classes}.')
  images, labels = source.read(indices)
  return Examples(np.asarray(images, np.uint8), np.asarray(labels, np.int32))


def device_shards(devices: Sequence[jax.Device]) -> list[int]:
  """Indices of the training shards this process reads: its devices' mesh positions."""
  return [i for i, device in enumerate(devices) if device.process_index == jax.process_index()]


def load_train_shards(config: ml_collections.ConfigDict,
                      devices: Sequence[jax.Device]) -> tuple[list[Examples], int]:
  """This process's devices' training shards (device order) and the shard size s.

  The split is cut into len(devices) strided shards of s = N // len(devices) examples.
  """
  source = open_source(config, config.train_split)
  size = source.num_examples // len(devices)
  if not size:
    raise DataError(f'The training split has {source.num_examples} examples, fewer than the '
                    f'{len(devices)} devices.')
  local = device_shards(devices)
  indices = np.concatenate([np.arange(i, size * len(devices), len(devices)) for i in local])
  examples = _read(source, indices, config.num_classes, config.train_split)
  return [Examples(images, labels) for images, labels in zip(
      np.split(examples.images, len(local)), np.split(examples.labels, len(local)))], size


def load_eval_shard(config: ml_collections.ConfigDict, split: str,
                    batch_size: int) -> dict[str, np.ndarray]:
  """This process's strided shard of `split` as padded batches, every example once.

  Returns {'image': uint8 (n, B, H, W, 3), 'label': (n, B), 'mask': (n, B) bool}, B =
  batch_size, n the batch count of the largest process shard (an all-gather: call it in every
  process), so every process takes part in as many (collective) evaluation steps.
  """
  source = open_source(config, split)
  indices = np.arange(jax.process_index(), source.num_examples, jax.process_count())
  examples = _read(source, indices, config.num_classes, split)
  num_batches = -(-distributed.max_over_processes(len(indices)) // batch_size)
  padding = num_batches * batch_size - len(indices)
  batches = {
      'image': np.concatenate([examples.images, np.zeros((padding, *examples.images.shape[1:]),
                                                          np.uint8)]),
      'label': np.concatenate([examples.labels, np.zeros(padding, np.int32)]),
      'mask': np.arange(num_batches * batch_size) < len(indices)}
  return {k: v.reshape(num_batches, batch_size, *v.shape[1:]) for k, v in batches.items()}


def epoch_order(seed, epoch, shard_size: int) -> jax.Array:
  """The permutation (shard_size,) of a shard's examples in epoch `epoch`."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _ORDER), epoch)
  return jax.random.permutation(key, shard_size)


def positions_and_indices(step, seed, shard_size: int, batch_size: int, order_fn: Callable,
                          xp=jnp):
  """Stream positions (b,) of `step`'s batch and the shard indices (b,) of their examples.

  A batch spans at most two epochs (batch_size <= shard_size); `order_fn(seed, epoch)` gives
  an epoch's permutation. `xp` is jnp inside the step, np on the host.
  """
  first = step * batch_size
  positions = first + xp.arange(batch_size, dtype=np.int32)
  epoch = first // shard_size
  within = positions % shard_size
  indices = xp.where(positions // shard_size == epoch, order_fn(seed, epoch)[within],
                     order_fn(seed, epoch + 1)[within])
  return positions, indices


def _crop_and_flip(image: jax.Array, key: jax.Array) -> jax.Array:
  """Zero-pad (H, W, 3) by PAD pixels, crop a random (H, W) window, flip it half the time."""
  crop_key, flip_key = jax.random.split(key)
  offset = jax.random.randint(crop_key, (2,), 0, 2 * PAD + 1)
  padded = jnp.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
  image = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), image.shape)
  return jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)


def normalize(images: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 (..., 3) -> float32, per-channel standardised with config's mean and std."""
  images = images.astype(jnp.float32) / 255.0
  return (images - jnp.asarray(config.normalize_mean)) / jnp.asarray(config.normalize_std)


def augment(images: jax.Array, positions: jax.Array, seed, config: ml_collections.ConfigDict,
            views: int = 1) -> jax.Array:
  """uint8 (b, H, W, 3) at stream positions (b,) -> normalised float32 (b, H, W, 3).

  With `views` > 1, (b, views, H, W, 3): view 0 as with one view, view v cropped and flipped
  with the position's key folded with v (DML peers with independent augmentation).
  """
  base = jax.random.fold_in(jax.random.PRNGKey(seed), _AUGMENT)
  keys = jax.vmap(functools.partial(jax.random.fold_in, base))(positions)
  view_keys = [keys] + [jax.vmap(jax.random.fold_in, (0, None))(keys, v) for v in range(1, views)]
  augmented = [jax.vmap(_crop_and_flip)(images, k) for k in view_keys]
  return normalize(augmented[0] if views == 1 else jnp.stack(augmented, axis=1), config)


def host_input_step(step_fn: Callable, config: ml_collections.ConfigDict, axis_name: str,
                    views: int = 1) -> Callable:
  """(state, raw batch, settings) -> step_fn(state, batch, settings): augments one run's
  block of a batch from `host_batches`.

  raw: {'image': uint8 (b, H, W, 3), 'label': (b,), 'position': (b,)}, this device's block;
  its seed is settings['seed'] + the device's position on `axis_name`.
  """
  def step(state, raw, settings):
    seed = settings['seed'] + jax.lax.axis_index(axis_name)
    batch = {'image': augment(raw['image'], raw['position'], seed, config, views),
             'label': raw['label']}
    return step_fn(state, batch, settings)
  return step


def device_input_step(step_fn: Callable, config: ml_collections.ConfigDict, axis_name: str,
                      shard_size: int, batch_size: int, views: int = 1) -> Callable:
  """(state, shard, settings) -> step_fn(state, batch, settings), the run's batch drawn on
  the device from its shard.

  shard: {'image': uint8 (s, H, W, 3), 'label': (s,)}, this device's training shard; the
  batch (b = batch_size examples) is the one of step `state.step`, gathered here and then
  augmented by `host_input_step`'s code, so both paths give the same batches.
  """
  augmented_step = host_input_step(step_fn, config, axis_name, views)
  order = functools.partial(epoch_order, shard_size=shard_size)

  def step(state, shard, settings):
    seed = settings['seed'] + jax.lax.axis_index(axis_name)
    positions, indices = positions_and_indices(state.step, seed, shard_size, batch_size, order)
    raw = {'image': shard['image'][indices], 'label': shard['label'][indices],
           'position': positions}
    return augmented_step(state, raw, settings)
  return step


def host_batches(shards: Sequence[Examples], shard_ids: Sequence[int], seeds: Sequence[int],
                 batch_size: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This process's blocks of every step's batch from `start_step` on, gathered on the host,
  for R runs of seeds `seeds`.

  `shard_ids` are the shards' mesh positions (`device_shards`). Yields {'image': uint8
  (k * b, R, H, W, 3), 'label': (k * b, R), 'position': (k * b, R)}: the k shards' blocks
  one after another, b = batch_size, run r's drawn exactly as `device_input_step` draws them.
  """
  size = len(shards[0].labels)
  order_on_cpu = jax.jit(epoch_order, static_argnums=2)

  @functools.lru_cache(maxsize=4 * len(shards) * len(seeds))
  def order(seed, epoch):  # Computed once per shard and epoch, on the host.
    with jax.default_device(jax.devices('cpu')[0]):
      return np.asarray(order_on_cpu(seed, epoch, size))

  for step in itertools.count(start_step):
    blocks = []
    for shard, shard_id in zip(shards, shard_ids):
      per_run = []
      for seed in seeds:
        positions, indices = positions_and_indices(step, int(seed) + shard_id, size, batch_size,
                                                   order, xp=np)
        per_run.append({'image': shard.images[indices], 'label': shard.labels[indices],
                        'position': positions})
      blocks.append({key: np.stack([r[key] for r in per_run], axis=1) for key in per_run[0]})
    yield {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}
