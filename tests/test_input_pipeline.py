"""Input: TFDS path under mock_data, folder datasets with class-balanced slices, padding."""
import hashlib
import os

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from sila_jax import input_pipeline
from sila_jax.errors import DataError

CLASSES = ('cat', 'dog', 'ship')


def make_folder(root, per_class=10, size=32):
  """root/train/<class>/<i>.jpg with random images; returns root."""
  rng = np.random.default_rng(0)
  for name in CLASSES:
    os.makedirs(os.path.join(root, 'train', name))
    for i in range(per_class):
      pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, 'train', name, f'{i:04d}.jpg'))
  return str(root)


@pytest.fixture
def folder_config(tiny_config, tmp_path):
  tiny_config.update(dataset='folder', data_dir=make_folder(tmp_path), num_classes=3,
                     train_split='train[:-3]', eval_split='train[-3:]')
  return tiny_config


def all_examples(split, config):
  batches = list(input_pipeline.eval_batches(split, config, 8))
  images = np.concatenate([b['image'][b['mask']] for b in batches])
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  return images, labels, batches


def test_tfds_train_batches_under_mock_data(tiny_config):
  with tfds.testing.mock_data(num_examples=40):
    split = input_pipeline.load_split(tiny_config, 'train', drop_remainder=True)
    assert split.num_examples == 40 and split.num_classes == 10
    stream = input_pipeline.train_batches(split, tiny_config, 16, seed=0)
    first = [next(stream) for _ in range(3)]
    again = input_pipeline.train_batches(split, tiny_config, 16, seed=0)
    other = input_pipeline.train_batches(split, tiny_config, 16, seed=1)
    resumed = input_pipeline.train_batches(split, tiny_config, 16, seed=0, start_step=2)
    chex.assert_shape(first[0]['image'], (16, 32, 32, 3))
    assert first[0]['image'].dtype == np.float32 and first[0]['label'].dtype == np.int32
    chex.assert_trees_all_equal(first, [next(again) for _ in range(3)])
    assert not np.array_equal(first[0]['image'], next(other)['image'])
    chex.assert_trees_all_equal(first[2], next(resumed))


def test_resume_starts_at_the_epoch_and_index_of_the_step(folder_config):
  split = input_pipeline.load_split(folder_config, 'train[:-3]', drop_remainder=True)
  assert split.num_examples == 21
  stream = input_pipeline.train_batches(split, folder_config, 4, seed=3)
  batches = [next(stream) for _ in range(12)]  # 48 examples: epochs 0, 1 and part of 2.
  assert input_pipeline.data_position(7, 4, 21) == (1, 7)
  for step in (5, 7, 10):
    resumed = input_pipeline.train_batches(split, folder_config, 4, seed=3, start_step=step)
    chex.assert_trees_all_equal(batches[step:], [next(resumed) for _ in range(12 - step)])
  labels = np.concatenate([b['label'] for b in batches])
  assert sorted(labels[:21]) == sorted(labels[21:42])  # Each epoch is the whole split...
  assert not np.array_equal(labels[:21], labels[21:42])  # ...in a new order.


def test_tfds_eval_sees_every_example_once(tiny_config):
  with tfds.testing.mock_data(num_examples=20):
    split = input_pipeline.load_split(tiny_config, 'test', drop_remainder=False)
    images, labels, batches = all_examples(split, tiny_config)
  assert [b['mask'].sum() for b in batches] == [8, 8, 4]
  assert all(len(b['label']) == 8 for b in batches)
  assert len(labels) == 20 and len({im.tobytes() for im in images}) == 20
  assert not batches[-1]['image'][4:].any()


def test_normalisation_uses_config_statistics(tiny_config):
  tiny_config.normalize_mean, tiny_config.normalize_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  with tfds.testing.mock_data(num_examples=8):
    split = input_pipeline.load_split(tiny_config, 'test', drop_remainder=False)
    raw = next(iter(split.dataset))['image'].numpy()
    images, _, _ = all_examples(split, tiny_config)
  np.testing.assert_allclose(images[0], (raw / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_folder_slices_are_class_balanced_and_disjoint(folder_config):
  train = input_pipeline.load_split(folder_config, 'train[:-3]', drop_remainder=False)
  held_out = input_pipeline.load_split(folder_config, 'train[-3:]', drop_remainder=False)
  everything = input_pipeline.load_split(folder_config, 'train', drop_remainder=False)
  assert (train.num_examples, held_out.num_examples, everything.num_examples) == (21, 9, 30)
  train_images, train_labels, _ = all_examples(train, folder_config)
  held_images, held_labels, _ = all_examples(held_out, folder_config)
  all_images, _, _ = all_examples(everything, folder_config)
  assert np.bincount(train_labels).tolist() == [7, 7, 7]
  assert np.bincount(held_labels).tolist() == [3, 3, 3]
  digest = lambda images: {hashlib.md5(im.tobytes()).hexdigest() for im in images}
  assert not digest(train_images) & digest(held_images)
  assert digest(train_images) | digest(held_images) == digest(all_images)


def test_folder_images_are_resized(folder_config, tmp_path):
  folder_config.data_dir = make_folder(tmp_path / 'big', per_class=2, size=40)
  split = input_pipeline.load_split(folder_config, 'train', drop_remainder=False)
  images, _, _ = all_examples(split, folder_config)
  chex.assert_shape(images, (6, 32, 32, 3))


def test_missing_data_dir_is_named(folder_config, tmp_path):
  folder_config.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(DataError, match='nowhere.* is not a directory'):
    input_pipeline.load_split(folder_config, 'train', drop_remainder=True)


def test_empty_data_dir_is_named(folder_config, tmp_path):
  os.makedirs(tmp_path / 'empty')
  folder_config.data_dir = str(tmp_path / 'empty')
  with pytest.raises(DataError, match="No split 'train' in data_dir .*empty.*no <split>"):
    input_pipeline.load_split(folder_config, 'train', drop_remainder=True)
  os.makedirs(tmp_path / 'empty' / 'train' / 'cat')
  with pytest.raises(DataError, match="Split 'train' of data_dir .*empty' holds no images"):
    input_pipeline.load_split(folder_config, 'train', drop_remainder=True)


def test_missing_tfds_data_dir_is_named(tiny_config, tmp_path):
  tiny_config.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(DataError, match='nowhere.* does not exist'):
    input_pipeline.load_split(tiny_config, 'train', drop_remainder=True)


def test_unknown_folder_split_lists_the_splits(folder_config):
  with pytest.raises(DataError, match=r"No split 'test'.*\['train'\]"):
    input_pipeline.load_split(folder_config, 'test', drop_remainder=False)


def test_unreadable_images_are_named_before_training(folder_config):
  broken = os.path.join(folder_config.data_dir, 'train', 'dog', '0003.jpg')
  with open(broken, 'r+b') as f:
    f.truncate(100)  # A cut-off download: the JPEG header survives, the image does not.
  with open(os.path.join(folder_config.data_dir, 'train', 'cat', '0001.jpg'), 'wb') as f:
    f.write(b'not an image at all')
  with pytest.raises(DataError, match=r'2 unreadable image\(s\).*(cat/0001.jpg.*dog/0003.jpg'
                                      r'|dog/0003.jpg.*cat/0001.jpg)'):
    input_pipeline.load_split(folder_config, 'train', drop_remainder=True)
  folder_config.check_images = False  # The check can be turned off for huge trees.
  input_pipeline.load_split(folder_config, 'train', drop_remainder=True)


@pytest.mark.parametrize('split', ['train[1]', 'train[a:b]', '[:5]'])
def test_malformed_folder_split_is_rejected(split):
  with pytest.raises(DataError, match='Folder split must look like'):
    input_pipeline.parse_folder_split(split)


def test_unknown_dataset_names_the_choices(tiny_config):
  tiny_config.dataset = 'imagenet'
  with pytest.raises(DataError, match="Unknown dataset 'imagenet'"):
    input_pipeline.load_split(tiny_config, 'train', drop_remainder=True)
