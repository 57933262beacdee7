"""TFDS CIFAR splits with random access and no TensorFlow at read time.

A split is prepared once in array_record files (TFDS's preparation may import TensorFlow)
and read through a TFDS data source, which decodes the PNG images with PIL: reading a
prepared dataset imports neither TensorFlow nor tf.data. tensorflow_datasets itself is
imported only when a TFDS dataset is opened, so `dataset=folder` runs without it.
"""
import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from sila_jax.errors import DataError, first_line

DATASETS = ('cifar10', 'cifar100')
# Data sources need random access, which TFDS's default tfrecord files do not give.
FILE_FORMAT = 'array_record'


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """One split of a prepared TFDS dataset: `num_examples` examples, read by index."""
  num_examples: int
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, 3)
  examples: Sequence[dict[str, Any]] = dataclasses.field(repr=False)  # TFDS data source

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, H, W, 3) and int32 labels (n,) of the examples at `indices` (n,)."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise IndexError(f'indices must lie in [0, {self.num_examples}), got '
                       f'[{indices.min()}, {indices.max()}].')
    # One batched read: array_record fetches the records of a list of keys together.
    examples = self.examples.__getitems__(indices.tolist())
    images = np.zeros((0, *self.image_shape), np.uint8)
    if examples:
      images = np.stack([example['image'] for example in examples]).astype(np.uint8, copy=False)
    labels = np.array([example['label'] for example in examples], np.int32)
    return images, labels


def open_split(dataset: str, data_dir: str, split: str) -> TfdsSource:
  """`split` of TFDS dataset `dataset` ('cifar10' | 'cifar100'), prepared in data_dir ('':
  TFDS's default).

  Downloads and prepares the dataset first if data_dir does not hold it yet. `split` is
  any TFDS split ('train', 'test', 'train[:45000]', ...).
  """
  if dataset not in DATASETS:
    raise DataError(f'Unknown TFDS dataset {dataset!r}; choose one of {DATASETS}.')
  if data_dir and '://' not in data_dir and not os.path.isdir(data_dir):
    raise DataError(f'data_dir {data_dir!r} does not exist; create it, or leave it empty '
                    'for the TFDS default.')
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name != 'tensorflow_datasets':
      raise
    raise DataError(f'TFDS is needed for dataset={dataset}, install tensorflow-datasets, or '
                    'train from an image folder with dataset=folder.') from e
  # The file format is chosen when preparing: a builder created with one refuses a
  # directory prepared with another before it can say so in a DataError.
  builder = tfds.builder(dataset, data_dir=data_dir or None)
  if not builder.is_prepared():
    _prepare(builder, dataset)
  try:
    examples = builder.as_data_source(split=split)
  except NotImplementedError as e:  # Prepared earlier by tf.data's pipeline, as tfrecord.
    raise DataError(f'{dataset} in {builder.data_dir} is in {builder.info.file_format.value} '
                    f'files, which only TensorFlow reads; delete that directory or choose '
                    f'another data_dir, and it is prepared again as {FILE_FORMAT}.') from e
  except ValueError as e:  # An unknown split, or a slice outside it.
    raise DataError(f'Split {split!r} of {dataset}: {first_line(e)}') from e
  features = builder.info.features
  return TfdsSource(num_examples=len(examples), num_classes=features['label'].num_classes,
                    image_shape=tuple(features['image'].shape), examples=examples)


def _prepare(builder, dataset: str) -> None:
  """Downloads and writes `dataset` as array_record files; raises DataError on failure."""
  try:
    builder.download_and_prepare(file_format=FILE_FORMAT)
  except Exception as e:  # Network, disk or permission: TFDS's own types vary.
    if _missing_tensorflow(e):
      raise DataError(f'Preparing {dataset} needs TensorFlow once (pip install tensorflow-cpu; '
                      'reading it afterwards does not), or train from an image folder with '
                      'dataset=folder.') from e
    if _raised_in_download(e):
      raise DataError(f'Download of {dataset} failed ({first_line(e)}); to train offline, '
                      'use --config.dataset=folder with an ImageFolder tree (see '
                      'docs/faq.md).') from e
    raise DataError(f'Could not prepare {dataset} in {builder.data_dir}: '
                    f'{first_line(e)}') from e


def _missing_tensorflow(error: BaseException | None) -> bool:
  # TFDS's extractor and CIFAR's generator read files with tf.io.gfile, and the extractor
  # wraps the ImportError in an ExtractError: look down the chain of causes.
  while error is not None:
    if isinstance(error, ImportError) and (error.name or '').split('.')[0] == 'tensorflow':
      return True
    error = error.__cause__ or error.__context__
  return False


def _raised_in_download(error: BaseException) -> bool:
  # TFDS gives no download error type of its own (requests, urllib and socket errors pass
  # through), but each one is raised under its download manager.
  tb = error.__traceback__
  while tb is not None:
    if f'tensorflow_datasets{os.sep}core{os.sep}download{os.sep}' in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False
