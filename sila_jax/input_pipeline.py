"""Input: TFDS CIFAR or an ImageFolder tree -> augmented, normalised numpy batches.

Splits are read per process (`jax.process_index()`). Training streams are shuffled and
augmented deterministically from `config.seed`; evaluation streams visit every example
exactly once, padding the last batch and marking real examples in `mask`.
"""
import dataclasses
import os
import re
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

DATASETS = ('cifar10', 'cifar100', 'folder')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
PAD = 4  # Pixels of zero padding before the random crop (the standard CIFAR recipe).


@dataclasses.dataclass(frozen=True)
class Split:
  """This process's share of one split: {'image': uint8 (H, W, 3), 'label': int64} examples."""
  dataset: tf.data.Dataset
  num_examples: int
  num_classes: int


def load_split(config: ml_collections.ConfigDict, split: str, *, drop_remainder: bool) -> Split:
  """This process's share of `split`; `drop_remainder` evens shares across processes."""
  if config.dataset == 'folder':
    return _load_folder_split(config, split, drop_remainder)
  if config.dataset in DATASETS:
    return _load_tfds_split(config, split, drop_remainder)
  raise ValueError(f'Unknown dataset {config.dataset!r}; choose one of {DATASETS}.')


def _load_tfds_split(config, split, drop_remainder) -> Split:
  builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
  builder.download_and_prepare()
  ds = builder.as_dataset(split=tfds.split_for_jax_process(split, drop_remainder=drop_remainder),
                          shuffle_files=False)
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
  return Split(ds, int(ds.cardinality()), builder.info.features['label'].num_classes)


_FOLDER_SPLIT = re.compile(r'^(\w+)(?:\[(-?\d*):(-?\d*)\])?$')


def parse_folder_split(split: str) -> tuple[str, slice]:
  """'train' -> ('train', [:]); 'train[:4500]' -> ('train', slice(None, 4500)).

  In a folder dataset the slice is taken within each class, so every split stays
  class-balanced (ImageFolder has no sub-split API of its own).
  """
  match = _FOLDER_SPLIT.match(split)
  if not match:
    raise ValueError(f"Folder split must look like 'train' or 'train[start:stop]', got {split!r}.")
  name, start, stop = match.groups()
  return name, slice(int(start) if start else None, int(stop) if stop else None)


def _count_images(directory: str) -> int:
  if not tf.io.gfile.isdir(directory):
    return 0
  return sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in tf.io.gfile.listdir(directory))


def _load_folder_split(config, split, drop_remainder) -> Split:
  if not config.data_dir or not tf.io.gfile.isdir(config.data_dir):
    raise FileNotFoundError(f'data_dir {config.data_dir!r} is not a directory; the folder '
                            'dataset needs <data_dir>/<split>/<class>/<image>.')
  builder = tfds.folder_dataset.ImageFolder(config.data_dir)
  name, per_class = parse_folder_split(split)
  if name not in builder.info.splits:
    raise ValueError(f'No split {name!r} in {config.data_dir}; found {list(builder.info.splits)}.')
  class_names = builder.info.features['label'].names
  ranges = [range(_count_images(os.path.join(config.data_dir, name, c)))[per_class]
            for c in class_names]
  starts = tf.constant([r.start for r in ranges], tf.int64)
  stops = tf.constant([r.stop for r in ranges], tf.int64)
  num_examples = sum(len(r) for r in ranges)

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
  ds = ds.shard(jax.process_count(), jax.process_index())
  share = len(range(jax.process_index(), num_examples, jax.process_count()))
  if drop_remainder:
    share = num_examples // jax.process_count()
    ds = ds.take(share)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  return Split(ds, share, len(class_names))


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
                  seed: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless augmented batches {'image': (b, H, W, 3) f32, 'label': (b,) i32}, b = batch_size.

  The stream is a function of `seed` alone; `start_step` skips the batches already seen.
  """
  ds = split.dataset.cache() if config.cache else split.dataset
  ds = ds.shuffle(min(config.shuffle_buffer, split.num_examples), seed=seed,
                  reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start_step * batch_size)

  def prepare(index, example):
    image = augment(example['image'], tf.stack([tf.constant(seed, tf.int64), index]))
    return {'image': normalize(image, config), 'label': tf.cast(example['label'], tf.int32)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _deterministic(ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
  return ds.as_numpy_iterator()


def eval_batches(split: Split, config: ml_collections.ConfigDict,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Each example once: {'image', 'label', 'mask': (b,) bool}, the last batch zero-padded."""
  ds = split.dataset.map(
      lambda ex: {'image': normalize(ex['image'], config), 'label': tf.cast(ex['label'], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  for batch in _deterministic(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)).as_numpy_iterator():
    yield pad_batch(batch, batch_size)


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Zero-pads every array to `batch_size` rows and adds `mask` (True for real rows)."""
  n = len(batch['label'])
  padded = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
            for k, v in batch.items()}
  padded['mask'] = np.arange(batch_size) < n
  return padded
