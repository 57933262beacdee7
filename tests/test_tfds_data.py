"""tfds_data: TFDS's real CIFAR-10 builder on a tiny archive in CIFAR's binary format.

Only the network fetch is replaced (the archive is a local file); extraction, generation
into array_record files and reading through the data source are TFDS's own.
"""
import io
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from sila_jax.data import tfds_data
from sila_jax.errors import DataError

tfds = pytest.importorskip('tensorflow_datasets')

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
               'truck')
TRAIN_FILES = [f'data_batch_{i}.bin' for i in range(1, 6)]
PER_FILE = 3  # Images per batch file: 15 train and 3 test images.


def write_cifar10_archive(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Writes cifar-10-binary.tar.gz at `path`.

  Returns {split: (images (n, 32, 32, 3), labels (n,))}.
  """
  rng = np.random.default_rng(0)
  written = {'train': ([], []), 'test': ([], [])}
  with tarfile.open(path, 'w:gz') as tar:
    def add(name, data):
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))

    for split, names in (('train', TRAIN_FILES), ('test', ['test_batch.bin'])):
      for name in names:
        images = rng.integers(0, 256, (PER_FILE, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, PER_FILE, dtype=np.uint8)
        # A record is 1 label byte and the image as 3 planes of 32x32 (CHW).
        records = [bytes([label]) + image.transpose(2, 0, 1).tobytes()
                   for image, label in zip(images, labels)]
        add(name, b''.join(records))
        written[split][0].append(images)
        written[split][1].append(labels)
    add('batches.meta.txt', ('\n'.join(CLASS_NAMES) + '\n\n').encode())
  return {split: (np.concatenate(images), np.concatenate(labels).astype(np.int32))
          for split, (images, labels) in written.items()}


def fetch_from(monkeypatch, archive: str) -> None:
  """Makes TFDS's download manager 'download' every URL to the local `archive`."""
  from etils import epath
  import promise

  def download_or_get_cache(self, resource):
    del self, resource
    return promise.Promise.resolve(epath.Path(archive))

  monkeypatch.setattr(tfds.download.DownloadManager, '_download_or_get_cache',
                      download_or_get_cache)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(data_dir holding cifar10 prepared by open_split, the images and labels written)."""
  tmp = tmp_path_factory.mktemp('tfds')
  archive = str(tmp / 'cifar-10-binary.tar.gz')
  written = write_cifar10_archive(archive)
  data_dir = tmp / 'data'
  data_dir.mkdir()
  with pytest.MonkeyPatch.context() as monkeypatch:
    fetch_from(monkeypatch, archive)
    tfds_data.open_split('cifar10', str(data_dir), 'train')
  return str(data_dir), written


def sorted_examples(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
  return sorted(zip((image.tobytes() for image in images), labels.tolist()))


@pytest.mark.slow
@pytest.mark.parametrize('split', ['train', 'test'])
def test_reads_exactly_the_examples_written(prepared, split):
  data_dir, written = prepared
  images, labels = written[split]
  source = tfds_data.open_split('cifar10', data_dir, split)
  assert (source.num_examples, source.num_classes) == (len(labels), 10)
  read_images, read_labels = source.read(np.arange(source.num_examples))
  assert read_images.shape == (len(labels), 32, 32, 3) and read_images.dtype == np.uint8
  assert read_labels.shape == (len(labels),) and read_labels.dtype == np.int32
  # TFDS shuffles examples by key hash when writing: compare the multisets.
  assert sorted_examples(read_images, read_labels) == sorted_examples(images, labels)


def test_read_by_index(prepared):
  data_dir, _ = prepared
  source = tfds_data.open_split('cifar10', data_dir, 'train')
  all_images, all_labels = source.read(np.arange(source.num_examples))
  indices = np.array([4, 0, 4, 11])
  images, labels = source.read(indices)
  np.testing.assert_array_equal(images, all_images[indices])
  np.testing.assert_array_equal(labels, all_labels[indices])
  images, labels = source.read(np.zeros(0, np.int64))
  assert images.shape == (0, 32, 32, 3) and labels.shape == (0,)
  with pytest.raises(IndexError):
    source.read(np.array([source.num_examples]))


def test_split_slices_and_unknown_split(prepared):
  data_dir, _ = prepared
  assert tfds_data.open_split('cifar10', data_dir, 'train[:10]').num_examples == 10
  with pytest.raises(DataError, match='validation'):
    tfds_data.open_split('cifar10', data_dir, 'validation')


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two machines without TensorFlow: one where it is not installed (the path finder does not
# see it, so probes like importlib.util.find_spec return None, as they would), one where
# `import tensorflow` fails (a broken install: a package that raises).
ABSENT = textwrap.dedent("""
    import importlib.machinery, sys
    class HideTensorflow:
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'tensorflow':
          return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
      def __getattr__(self, name):
        return getattr(importlib.machinery.PathFinder, name)
    sys.meta_path[:] = [HideTensorflow() if f is importlib.machinery.PathFinder else f
                        for f in sys.meta_path]
    """)
BROKEN = "raise ImportError('tensorflow is broken in this test')\n"


def run_without_tensorflow(how: str, script: str, tmp_path, *args: str) -> None:
  """Runs `script` in a fresh python whose `import tensorflow` fails; `how`: 'absent' |
  'broken'."""
  env = dict(os.environ)
  if how == 'absent':
    script = ABSENT + script
  else:
    (tmp_path / 'stub' / 'tensorflow').mkdir(parents=True)
    (tmp_path / 'stub' / 'tensorflow' / '__init__.py').write_text(BROKEN)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(tmp_path / 'stub'),
                                                      env.get('PYTHONPATH')]))
  script += textwrap.dedent("""
      import sys
      assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow' and sys.modules[m]]
      """)
  result = subprocess.run([sys.executable, '-c', script, *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize('how', ['absent', 'broken'])
def test_reads_without_tensorflow(prepared, tmp_path, how):
  data_dir, written = prepared
  images, labels = written['test']
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from sila_jax.data import tfds_data
      source = tfds_data.open_split('cifar10', {data_dir!r}, 'test')
      images, labels = source.read(np.arange(source.num_examples))
      np.save(sys.argv[1], images)
      np.save(sys.argv[2], labels)
      """)
  paths = [str(tmp_path / 'images.npy'), str(tmp_path / 'labels.npy')]
  run_without_tensorflow(how, script, tmp_path, *paths)
  assert (sorted_examples(np.load(paths[0]), np.load(paths[1]))
          == sorted_examples(images, labels))


def test_preparing_without_tensorflow_says_so(tmp_path):
  archive = str(tmp_path / 'cifar-10-binary.tar.gz')
  write_cifar10_archive(archive)
  (tmp_path / 'data').mkdir()
  run_without_tensorflow('absent', textwrap.dedent(f"""
      import promise
      from etils import epath
      import tensorflow_datasets as tfds
      from sila_jax.data import tfds_data
      from sila_jax.errors import DataError
      tfds.download.DownloadManager._download_or_get_cache = (
          lambda self, resource: promise.Promise.resolve(epath.Path({archive!r})))
      try:
        tfds_data.open_split('cifar10', {str(tmp_path / 'data')!r}, 'train')
      except DataError as e:
        assert str(e).startswith('Preparing cifar10 needs TensorFlow once'), e
      else:
        raise AssertionError('prepared without TensorFlow')
      """), tmp_path)


def test_sila_jax_does_not_import_tfds(tmp_path):
  run_without_tensorflow('absent', textwrap.dedent("""
      import sys
      import sila_jax.data.tfds_data
      assert 'tensorflow_datasets' not in sys.modules
      """), tmp_path)


def test_tfrecord_data_dir_is_one_line(tmp_path, monkeypatch):
  archive = str(tmp_path / 'cifar-10-binary.tar.gz')
  write_cifar10_archive(archive)
  fetch_from(monkeypatch, archive)
  tfds.builder('cifar10', data_dir=str(tmp_path)).download_and_prepare()  # tf.data's format.
  with pytest.raises(DataError, match='tfrecord files') as error:
    tfds_data.open_split('cifar10', str(tmp_path), 'train')
  assert '\n' not in str(error.value)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
  def unreachable(self, resource):
    del self, resource
    raise OSError('[Errno 101] Network is unreachable\nmore detail')

  monkeypatch.setattr(tfds.download.DownloadManager, '_download_or_get_cache', unreachable)
  with pytest.raises(DataError) as error:
    tfds_data.open_split('cifar10', str(tmp_path), 'train')
  message = str(error.value)
  assert '\n' not in message
  assert 'Download of cifar10 failed' in message and 'Network is unreachable' in message
  assert 'dataset=folder' in message


def test_missing_data_dir_and_missing_tfds(tmp_path, monkeypatch):
  with pytest.raises(DataError, match='does not exist'):
    tfds_data.open_split('cifar10', str(tmp_path / 'nowhere'), 'train')
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # `import` now fails.
  with pytest.raises(DataError) as error:
    tfds_data.open_split('cifar10', str(tmp_path), 'train')
  assert str(error.value) == ('TFDS is needed for dataset=cifar10, install tensorflow-datasets, '
                              'or train from an image folder with dataset=folder.')
