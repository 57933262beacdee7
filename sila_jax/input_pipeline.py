"""Input: TFDS CIFAR or an ImageFolder tree -> augmented, normalised numpy batches.

Each process reads only its own shards. Training reads one even shard of the split per
device, each shuffled and augmented deterministically from `config.seed` and its index, and
a process's batch is its devices' blocks of the global batch: so the global batches depend on
the seed and the device count, not on how the devices are spread over processes.
Evaluation reads one shard per process and visits every example exactly once, padding the
last batch and marking real examples in `mask`.
"""
import dataclasses
import os
import re
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sila_jax import distributed
from sila_jax.errors import DataError

DATASETS = ('cifar10', 'cifar100', 'folder')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
PAD = 4  # Pixels of zero padding before the random crop (the standard CIFAR recipe).


@dataclasses.dataclass(frozen=True)
class Split:
  """One shard of a split: {'image': uint8 (H, W, 3), 'label': int64} examples.

  `largest_shard` is the size of the split's largest shard: processes evaluating shards of
  unequal size still run as many batches.
  """
  dataset: tf.data.Dataset
  num_examples: int
  num_classes: int
  largest_shard: int


def load_split(config: ml_collections.ConfigDict, split: str, *, drop_remainder: bool,
               shard: tuple[int, int] | None = None) -> Split:
  """One shard of `split`: shard=(index, count) of `count` even shards, by default this process's.

  `drop_remainder` makes the shards equally large; without it every example is in exactly one
  shard and the processes agree on `largest_shard` (an all-gather: call it in every process).
  """
  index, count = shard or (jax.process_index(), jax.process_count())
  if config.dataset == 'folder':
    loaded = _load_folder_split(config, split, drop_remainder, index, count)
  elif config.dataset in DATASETS:
    loaded = _load_tfds_split(config, split, drop_remainder, index, count)
  else:
    raise DataError(f'Unknown dataset {config.dataset!r}; choose one of {DATASETS}.')
  if drop_remainder:
    return loaded
  return dataclasses.replace(loaded, largest_shard=distributed.max_over_processes(
      loaded.num_examples))


def device_shards(devices: Sequence[jax.Device]) -> list[tuple[int, int]]:
  """(index, count) of the training shards this process reads: its devices' mesh positions."""
  return [(i, len(devices)) for i, device in enumerate(devices)
          if device.process_index == jax.process_index()]


def _load_tfds_split(config, split, drop_remainder, index, count) -> Split:
  if config.data_dir and not tf.io.gfile.isdir(config.data_dir):
    raise DataError(f'data_dir {config.data_dir!r} does not exist; create it, or leave it empty '
                    'for the TFDS default.')
  builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
  try:
    builder.download_and_prepare()
  except Exception as e:  # Network, disk or permission: TFDS's own types vary.
    raise DataError(f'Could not download and prepare {config.dataset} in {builder.data_dir}: '
                    f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from e
  ds = builder.as_dataset(split=tfds.split_for_jax_process(
      split, process_index=index, process_count=count, drop_remainder=drop_remainder),
                          shuffle_files=False)
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
  num_examples = int(ds.cardinality())
  return Split(ds, num_examples, builder.info.features['label'].num_classes, num_examples)


_FOLDER_SPLIT = re.compile(r'^(\w+)(?:\[(-?\d*):(-?\d*)\])?$')


def parse_folder_split(split: str) -> tuple[str, slice]:
  """'train' -> ('train', [:]); 'train[:4500]' -> ('train', slice(None, 4500)).

  In a folder dataset the slice is taken within each class, so every split stays
  class-balanced (ImageFolder has no sub-split API of its own).
  """
  match = _FOLDER_SPLIT.match(split)
  if not match:
    raise DataError(f"Folder split must look like 'train' or 'train[start:stop]', got {split!r}.")
  name, start, stop = match.groups()
  return name, slice(int(start) if start else None, int(stop) if stop else None)


def _count_images(directory: str) -> int:
  if not tf.io.gfile.isdir(directory):
    return 0
  return sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in tf.io.gfile.listdir(directory))


def _load_folder_split(config, split, drop_remainder, index, count) -> Split:
  if not config.data_dir or not tf.io.gfile.isdir(config.data_dir):
    raise DataError(f'data_dir {config.data_dir!r} is not a directory; the folder dataset '
                    'needs <data_dir>/<split>/<class>/<image>.')
  name, per_class = parse_folder_split(split)
  builder = tfds.folder_dataset.ImageFolder(config.data_dir)
  if name not in builder.info.splits:
    raise DataError(f'No split {name!r} in data_dir {config.data_dir!r} (found '
                    f'{sorted(builder.info.splits) or "no <split>/<class>/<image> files"}).')
  class_names = builder.info.features['label'].names
  ranges = [range(_count_images(os.path.join(config.data_dir, name, c)))[per_class]
            for c in class_names]
  starts = tf.constant([r.start for r in ranges], tf.int64)
  stops = tf.constant([r.stop for r in ranges], tf.int64)
  num_examples = sum(len(r) for r in ranges)
  if not num_examples:
    raise DataError(f'Split {split!r} of data_dir {config.data_dir!r} holds no images.')

  def index_within_class(seen, example):
    label = example['label']
    return seen + tf.one_hot(label, len(class_names), dtype=tf.int64), (example, seen[label])

  def in_slice(example, index):
    return (index >= starts[example['label']]) & (index < stops[example['label']])

  def decode(example, index):
    del index
    image = tf.io.decode_image(example['image'], channels=3, expand_animations=False)
    size = (config.image_size, config.image_size)
    image = tf.cond(tf.reduce_all(tf.shape(image)[:2] == size), lambda: image,
                    lambda: tf.saturate_cast(tf.round(tf.image.resize(image, size)), tf.uint8))
    return {'image': tf.ensure_shape(image, (*size, 3)), 'label': example['label']}

  ds = builder.as_dataset(split=name, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.scan(tf.zeros(len(class_names), tf.int64), index_within_class).filter(in_slice)
  ds = ds.shard(count, index)
  share = len(range(index, num_examples, count))
  if config.check_images:
    _check_images_decode(ds, share, split, config.data_dir)
  if drop_remainder:
    share = num_examples // count
    ds = ds.take(share)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  return Split(ds, share, len(class_names), share)


def _decodes(example, index) -> tuple[tf.Tensor, tf.Tensor]:
  del index
  image = tf.io.decode_image(example['image'], channels=3, expand_animations=False)
  return tf.shape(image)[0], example['image/filename']


def _check_images_decode(ds: tf.data.Dataset, num_examples: int, split: str,
                         data_dir: str) -> None:
  """Decodes every image once; raises DataError naming the files that do not decode."""
  readable = ds.map(_decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  if int(readable.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)) == num_examples:
    return
  good = {name for _, name in readable.as_numpy_iterator()}
  bad = [name.decode() for name in ds.map(lambda ex, i: ex['image/filename']).as_numpy_iterator()
         if name not in good]
  raise DataError(f'{len(bad)} unreadable image(s) in split {split!r} of {data_dir}: '
                  f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                  '(fix or remove them, or set check_images=False to skip this check).')


def normalize(image: tf.Tensor, config: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 (H, W, 3) -> float32, per-channel standardised with config's mean and std."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(config.normalize_mean)) / tf.constant(config.normalize_std)


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Zero-pad by PAD pixels, random crop back to (H, W), random horizontal flip."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  padded = tf.pad(image, [[PAD, PAD], [PAD, PAD], [0, 0]])
  image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def train_batches(split: Split, config: ml_collections.ConfigDict, batch_size: int, *,
                  seed: int, start_step: int = 0, views: int = 1
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless augmented batches {'image': (b, H, W, 3) f32, 'label': (b,) i32}, b = batch_size.

  Epoch e visits the split in an order drawn from (seed, e), and the n-th example of the
  stream is augmented with the seed (seed, n); so the stream is a function of `seed` alone
  and resuming at `start_step` starts directly at its epoch and index within it.
  With `views` > 1, images are (b, views, H, W, 3): view 0 as above, view v augmented with
  (seed, n) folded with v (DML peers with independent augmentation).
  """
  examples = split.dataset.cache() if config.cache else split.dataset
  n = split.num_examples
  start_epoch, start_index = data_position(start_step, batch_size, n)

  def epoch(e):
    order = examples.shuffle(min(config.shuffle_buffer, n), seed=seed * 1_000_003 + e,
                             reshuffle_each_iteration=False)
    return order.enumerate(start=e * n)

  def prepare(index, example):
    example_seed = tf.stack([tf.constant(seed, tf.int64), index])
    seeds = [example_seed] + [tf.random.experimental.stateless_fold_in(example_seed, v)
                              for v in range(1, views)]
    images = [normalize(augment(example['image'], s), config) for s in seeds]
    return {'image': images[0] if views == 1 else tf.stack(images),
            'label': tf.cast(example['label'], tf.int32)}

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.skip(start_index).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _deterministic(ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
  return ds.as_numpy_iterator()


def device_train_batches(splits: Sequence[Split], shards: Sequence[tuple[int, int]],
                         config: ml_collections.ConfigDict, device_batch: int, *,
                         start_step: int = 0, views: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This process's blocks of the global batch, (len(splits) * device_batch, ...) arrays.

  `splits` are the training shards `shards` (from device_shards) of this process's devices;
  shard i streams with seed config.seed + i (and `views`), as `train_batches` describes.
  """
  streams = [train_batches(split, config, device_batch, seed=config.seed + index,
                           start_step=start_step, views=views)
             for split, (index, _) in zip(splits, shards)]
  if len(streams) == 1:
    return streams[0]
  return ({k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
          for blocks in zip(*streams))


def data_position(step: int, batch_size: int, num_examples: int) -> tuple[int, int]:
  """(epoch, index within it) of the first example after `step` batches of `batch_size`."""
  return divmod(step * batch_size, num_examples)


def eval_batches(split: Split, config: ml_collections.ConfigDict,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Each example once: {'image', 'label', 'mask': (b,) bool}, the last batch zero-padded.

  Empty batches (mask all False) follow up to the batch count of the split's largest shard,
  so every process takes part in as many (collective) evaluation steps.
  """
  ds = split.dataset.map(
      lambda ex: {'image': normalize(ex['image'], config), 'label': tf.cast(ex['label'], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  for batch in _deterministic(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)).as_numpy_iterator():
    yield pad_batch(batch, batch_size)
  size = config.image_size
  empty = {'image': np.zeros((0, size, size, 3), np.float32), 'label': np.zeros(0, np.int32)}
  for _ in range(-(-split.num_examples // batch_size), -(-split.largest_shard // batch_size)):
    yield pad_batch(empty, batch_size)


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Zero-pads every array to `batch_size` rows and adds `mask` (True for real rows)."""
  n = len(batch['label'])
  padded = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
            for k, v in batch.items()}
  padded['mask'] = np.arange(batch_size) < n
  return padded
