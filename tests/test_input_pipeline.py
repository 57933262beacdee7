"""Input: folder splits read without TensorFlow, batches drawn on the device and on the host."""
import functools
import hashlib
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from sila_jax.data import folder_data
from sila_jax.data import input_pipeline
from sila_jax.errors import DataError
from tests.helpers import AXIS, make_folder


@pytest.fixture
def folder_config(tiny_config, tmp_path):
  tiny_config.update(dataset='folder', data_dir=make_folder(tmp_path), num_classes=3,
                     train_split='train[:-3]', eval_split='train[-3:]')
  return tiny_config


def read_all(config, split):
  source = input_pipeline.open_source(config, split)
  return source.read(np.arange(source.num_examples))


def digests(images):
  return {hashlib.md5(image.tobytes()).hexdigest() for image in images}


def test_folder_slices_are_class_balanced_and_disjoint(folder_config):
  train_images, train_labels = read_all(folder_config, 'train[:-3]')
  held_images, held_labels = read_all(folder_config, 'train[-3:]')
  all_images, _ = read_all(folder_config, 'train')
  assert (len(train_labels), len(held_labels), len(all_images)) == (21, 9, 30)
  assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
  assert np.bincount(train_labels).tolist() == [7, 7, 7]
  assert np.bincount(held_labels).tolist() == [3, 3, 3]
  assert not digests(train_images) & digests(held_images)
  assert digests(train_images) | digests(held_images) == digests(all_images)


@pytest.mark.slow
def test_folder_order_is_tfds_image_folders(folder_config):
  """The order (and so every per-class slice) of the TFDS ImageFolder this replaced."""
  tfds = pytest.importorskip('tensorflow_datasets')
  builder = tfds.folder_dataset.ImageFolder(folder_config.data_dir)
  ds = builder.as_dataset(split='train', shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  names = [example['image/filename'].decode() for example in ds.as_numpy_iterator()]
  assert folder_data.FolderSource(folder_config.data_dir, 'train', 32).paths == names


def test_worker_processes_decode_like_the_loop(folder_config, monkeypatch):
  source = input_pipeline.open_source(folder_config, 'train')
  serial, _ = source.read(np.arange(30))
  monkeypatch.setattr(folder_data, 'PARALLEL_DECODE_MIN_IMAGES', 1)
  monkeypatch.setattr(os, 'cpu_count', lambda: 3)
  parallel, _ = source.read(np.arange(30))
  np.testing.assert_array_equal(parallel, serial)


def test_folder_images_are_resized(folder_config, tmp_path):
  folder_config.data_dir = make_folder(tmp_path / 'big', per_class=2, size=40)
  images, _ = read_all(folder_config, 'train')
  chex.assert_shape(images, (6, 32, 32, 3))


def test_eval_shard_holds_every_example_once_padded(folder_config):
  batches = input_pipeline.load_eval_shard(folder_config, 'train', 8)
  chex.assert_shape(batches['image'], (4, 8, 32, 32, 3))
  assert batches['mask'].sum(axis=1).tolist() == [8, 8, 8, 6]
  images, _ = read_all(folder_config, 'train')
  np.testing.assert_array_equal(batches['image'][batches['mask']], images)
  assert not batches['image'][3, 6:].any() and not batches['label'][3, 6:].any()


def test_train_shards_are_strided_and_disjoint(folder_config):
  devices = jax.devices()[:4]
  shards, size = input_pipeline.load_train_shards(folder_config, devices)
  images, labels = read_all(folder_config, 'train[:-3]')
  assert size == 5 and len(shards) == 4
  for i, shard in enumerate(shards):
    np.testing.assert_array_equal(shard.images, images[i:20:4])
    np.testing.assert_array_equal(shard.labels, labels[i:20:4])


def device_batches(shards, config, batch_size, steps, views=1):
  """The batches the device path draws, for every device of the shards, steps 0..steps-1."""
  mesh = Mesh(np.asarray(jax.devices()[:len(shards)]), (AXIS,))
  step = input_pipeline.device_input_step(lambda state, batch, run: batch, config, AXIS,
                                          len(shards[0].labels), batch_size, views)

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
  def draw(state_step, data):
    return step(type('State', (), {'step': state_step}), data, {'seed': config.seed})

  data = {'image': np.concatenate([s.images for s in shards]),
          'label': np.concatenate([s.labels for s in shards])}
  return [jax.device_get(draw(jnp.int32(i), data)) for i in range(steps)]


def host_augmented(shards, config, batch_size, steps, start_step=0):
  """The host path's batches (augmented by the step's code) for steps start..start+steps-1."""
  mesh = Mesh(np.asarray(jax.devices()[:len(shards)]), (AXIS,))
  step = input_pipeline.host_input_step(lambda state, batch, run: batch, config, AXIS)
  draw = jax.jit(jax.shard_map(lambda raw: step(None, raw, {'seed': config.seed}), mesh=mesh,
                               in_specs=P(AXIS), out_specs=P(AXIS)))
  stream = input_pipeline.host_batches(shards, range(len(shards)), [config.seed], batch_size,
                                       start_step)
  only_run = lambda raw: {key: value[:, 0] for key, value in raw.items()}
  return [jax.device_get(draw(only_run(next(stream)))) for _ in range(steps)]


def test_device_and_host_paths_draw_the_same_batches(folder_config):
  shards, _ = input_pipeline.load_train_shards(folder_config, jax.devices()[:2])
  on_device = device_batches(shards, folder_config, 4, 7)
  on_host = host_augmented(shards, folder_config, 4, 7)
  chex.assert_trees_all_equal(on_device, on_host)
  chex.assert_shape(on_device[0]['image'], (8, 32, 32, 3))
  assert on_device[0]['image'].dtype == np.float32


def test_resume_starts_at_the_batch_of_the_step(folder_config):
  shards, _ = input_pipeline.load_train_shards(folder_config, jax.devices()[:1])
  batches = host_augmented(shards, folder_config, 4, 12)  # 48 of 21: epochs 0, 1, part of 2.
  for step in (5, 7, 10):
    chex.assert_trees_all_equal(batches[step:],
                                host_augmented(shards, folder_config, 4, 12 - step, step))
  stream = input_pipeline.host_batches(shards, [0], [folder_config.seed], 4)
  raw = [{key: value[:, 0] for key, value in next(stream).items()} for _ in range(12)]
  labels = np.concatenate([b['label'] for b in raw])
  positions = np.concatenate([b['position'] for b in raw])
  assert positions.tolist() == list(range(48))
  images = np.concatenate([b['image'] for b in raw])
  assert digests(images[:21]) == digests(images[21:42]) == digests(shards[0].images)
  assert not np.array_equal(labels[:21], labels[21:42])  # Each epoch in a new order.


def test_each_shard_streams_with_its_own_seed(folder_config):
  shards, _ = input_pipeline.load_train_shards(folder_config, jax.devices()[:1])
  twice = [shards[0], shards[0]]
  first, second = np.split(device_batches(twice, folder_config, 4, 1)[0]['image'], 2)
  assert not np.array_equal(first, second)


def test_crops_and_flips_the_padded_image(folder_config):
  image = np.random.default_rng(0).integers(1, 256, (32, 32, 3), np.uint8)
  images = np.repeat(image[None], 64, axis=0)
  augmented = input_pipeline.augment(images, jnp.arange(64), 0, folder_config)
  raw = np.asarray(augmented * np.asarray(folder_config.normalize_std)
                   + np.asarray(folder_config.normalize_mean)) * 255
  raw = np.round(raw).astype(np.int32)
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0))).astype(np.int32)
  windows = {(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)}
  seen = set()
  for out in raw:
    matches = [(dy, dx, flip) for dy, dx, flip in windows
               if np.array_equal(out, (padded[dy:dy + 32, dx:dx + 32][:, ::-1] if flip
                                       else padded[dy:dy + 32, dx:dx + 32]))]
    assert len(matches) == 1
    seen.add(matches[0])
  assert len(seen) > 40 and {flip for _, _, flip in seen} == {0, 1}


def test_views_are_augmented_independently(folder_config):
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
  one = input_pipeline.augment(images, jnp.arange(8), 0, folder_config)
  three = input_pipeline.augment(images, jnp.arange(8), 0, folder_config, views=3)
  chex.assert_shape(three, (8, 3, 32, 32, 3))
  np.testing.assert_array_equal(three[:, 0], one)
  assert not np.array_equal(three[:, 1], three[:, 0])
  assert not np.array_equal(three[:, 2], three[:, 1])


def test_normalisation_uses_config_statistics(folder_config):
  folder_config.normalize_mean, folder_config.normalize_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  np.testing.assert_allclose(input_pipeline.normalize(images, folder_config),
                             (images / 255.0 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_missing_data_dir_is_named(folder_config, tmp_path):
  folder_config.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(DataError, match='nowhere.* is not a directory'):
    input_pipeline.open_source(folder_config, 'train')


def test_empty_data_dir_is_named(folder_config, tmp_path):
  os.makedirs(tmp_path / 'empty')
  folder_config.data_dir = str(tmp_path / 'empty')
  with pytest.raises(DataError, match="No split 'train' in data_dir .*empty.*no <split>"):
    input_pipeline.open_source(folder_config, 'train')
  os.makedirs(tmp_path / 'empty' / 'train' / 'cat')
  with pytest.raises(DataError, match="Split 'train' of data_dir .*empty' holds no images"):
    input_pipeline.open_source(folder_config, 'train')


def test_unknown_folder_split_lists_the_splits(folder_config):
  with pytest.raises(DataError, match=r"No split 'test'.*\['train'\]"):
    input_pipeline.open_source(folder_config, 'test')


def test_unreadable_images_are_named(folder_config):
  broken = os.path.join(folder_config.data_dir, 'train', 'dog', '0003.jpg')
  with open(broken, 'r+b') as f:
    f.truncate(100)  # A cut-off download: the JPEG header survives, the image does not.
  with open(os.path.join(folder_config.data_dir, 'train', 'cat', '0001.jpg'), 'wb') as f:
    f.write(b'not an image at all')
  with pytest.raises(DataError, match=r'2 unreadable image\(s\).*(cat/0001.jpg.*dog/0003.jpg'
                                      r'|dog/0003.jpg.*cat/0001.jpg)'):
    read_all(folder_config, 'train')


def test_labels_beyond_num_classes_are_refused(folder_config):
  folder_config.num_classes = 2
  with pytest.raises(DataError, match=r"num_classes=2 but split 'train' has 3 classes"):
    input_pipeline.load_eval_shard(folder_config, 'train', 8)


@pytest.mark.parametrize('split', ['train[1]', 'train[a:b]', '[:5]'])
def test_malformed_folder_split_is_rejected(split):
  with pytest.raises(DataError, match='Folder split must look like'):
    folder_data.parse_split(split)


def test_unknown_dataset_names_the_choices(tiny_config):
  tiny_config.dataset = 'imagenet'
  with pytest.raises(DataError, match="Unknown dataset 'imagenet'"):
    input_pipeline.open_source(tiny_config, 'train')
