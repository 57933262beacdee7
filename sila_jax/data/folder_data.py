"""ImageFolder trees (<data_dir>/<split>/<class>/<image>) read with PIL and numpy, no TensorFlow.

Examples are ordered as TFDS's ImageFolder orders them (classes and files sorted, then
shuffled by `random.Random(<split name>)`), so a split such as `train[-500:]` holds the same
images as it did when this project read folders through TFDS.
"""
import os
import random
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from sila_jax.errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Below this many images, starting worker processes costs more than it saves.
PARALLEL_DECODE_MIN_IMAGES = 2048

_FOLDER_SPLIT = re.compile(r'^(\w+)(?:\[(-?\d*):(-?\d*)\])?$')


def parse_split(split: str) -> tuple[str, slice]:
  """'train' -> ('train', [:]); 'train[:4500]' -> ('train', slice(None, 4500)).

  The slice is taken within each class, so every split stays class-balanced.
  """
  match = _FOLDER_SPLIT.match(split)
  if not match:
    raise DataError(f"Folder split must look like 'train' or 'train[start:stop]', got {split!r}.")
  name, start, stop = match.groups()
  return name, slice(int(start) if start else None, int(stop) if stop else None)


def _subdirectories(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))


class FolderSource:
  """One split of an ImageFolder tree: `num_examples`, `num_classes`, `read(indices)`."""

  def __init__(self, data_dir: str, split: str, image_size: int):
    if not data_dir or not os.path.isdir(data_dir):
      raise DataError(f'data_dir {data_dir!r} is not a directory; the folder dataset '
                      'needs <data_dir>/<split>/<class>/<image>.')
    name, per_class = parse_split(split)
    splits = [s for s in _subdirectories(data_dir) if _subdirectories(os.path.join(data_dir, s))]
    if name not in splits:
      raise DataError(f'No split {name!r} in data_dir {data_dir!r} (found '
                      f'{splits or "no <split>/<class>/<image> files"}).')
    split_dir = os.path.join(data_dir, name)
    classes = _subdirectories(split_dir)
    examples = [(os.path.join(split_dir, c, f), label) for label, c in enumerate(classes)
                for f in sorted(os.listdir(os.path.join(split_dir, c)))
                if f.lower().endswith(IMAGE_EXTENSIONS)]
    random.Random(name).shuffle(examples)
    within, counts = [], [0] * len(classes)  # Each example's index within its class.
    for _, label in examples:
      within.append(counts[label])
      counts[label] += 1
    ranges = [range(count)[per_class] for count in counts]
    chosen = [example for example, i in zip(examples, within) if i in ranges[example[1]]]
    if not chosen:
      raise DataError(f'Split {split!r} of data_dir {data_dir!r} holds no images.')
    self.paths = [path for path, _ in chosen]
    self.labels = np.asarray([label for _, label in chosen], np.int32)
    self.num_examples = len(self.paths)
    self.num_classes = len(classes)
    self.image_size = image_size
    self.description = f'split {split!r} of {data_dir}'

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, S, S, 3) and int32 labels (n,) of the examples at `indices`."""
    paths = [self.paths[i] for i in indices]
    return decode_images(paths, self.image_size, self.description), self.labels[indices]


def _decode(path: str, size: int) -> np.ndarray | None:
  """uint8 (size, size, 3), resized bilinearly if needed; None if the file does not decode."""
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
      if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
      return np.asarray(image)
  except (OSError, ValueError, Image.DecompressionBombError):
    return None


def decode_images(paths: list[str], size: int, description: str = 'the split') -> np.ndarray:
  """uint8 (len(paths), size, size, 3); DataError naming the files that do not decode."""
  workers = min(os.cpu_count() or 1, 32)
  if len(paths) >= PARALLEL_DECODE_MIN_IMAGES and workers > 1:
    images = _decode_in_workers(paths, size, workers)
  else:
    images = [_decode(p, size) for p in paths]
  bad = [p for p, image in zip(paths, images) if image is None]
  if bad:
    raise DataError(f'{len(bad)} unreadable image(s) in {description}: '
                    f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} (fix or remove them).")
  return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


def _decode_in_workers(paths: list[str], size: int, workers: int) -> list[np.ndarray | None]:
  """`_decode` of every path, in `workers` processes running this module's `_worker`.

  Threads do not scale (PIL's per-image Python work holds the GIL), and multiprocessing
  would import the caller's main module, JAX and all, in every worker: these import only
  numpy and PIL.
  """
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ,
         'PYTHONPATH': os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))}
  with tempfile.TemporaryDirectory() as tmp:
    jobs = []
    for k, chunk in enumerate(np.array_split(np.asarray(paths), workers)):
      listing, out = os.path.join(tmp, f'{k}.txt'), os.path.join(tmp, f'{k}.npz')
      with open(listing, 'w') as f:
        f.write('\n'.join(chunk))
      command = [sys.executable, '-m', 'sila_jax.data.folder_data', listing, str(size), out]
      jobs.append((subprocess.Popen(command, env=env), out))
    images = []
    try:
      for process, out in jobs:
        if process.wait():
          raise DataError(f'An image-decoding worker failed with exit code '
                          f'{process.returncode}.')
        with np.load(out) as decoded:
          images.extend(image if ok else None
                        for image, ok in zip(decoded['images'], decoded['ok']))
    finally:  # Stopped (SIGTERM, Ctrl-C) or failed: the others' work is not needed.
      for process, _ in jobs:
        process.kill()
        process.wait()
  return images


def _worker(listing: str, size: str, out: str) -> None:
  """Decodes the paths listed in `listing` into `out` (.npz: images, ok). Ctrl-C is the
  parent's to handle; a worker whose parent has gone (exited at once on a signal) stops."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  parent = os.getppid()
  with open(listing) as f:
    paths = f.read().split('\n')
  blank = np.zeros((int(size), int(size), 3), np.uint8)
  decoded = []
  for i, path in enumerate(paths):
    if i % 256 == 0 and os.getppid() != parent:
      sys.exit(1)
    decoded.append(_decode(path, int(size)))
  np.savez(out, images=np.stack([blank if d is None else d for d in decoded]),
           ok=np.asarray([d is not None for d in decoded]))


if __name__ == '__main__':
  _worker(*sys.argv[1:])
