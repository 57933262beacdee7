"""Small ImageFolder trees of random JPEGs for the tests."""
import os

import numpy as np
from PIL import Image

CLASSES = ('cat', 'dog', 'ship')


def make_folder(root, per_class=10, size=32, classes=CLASSES):
  """root/train/<class>/<i>.jpg with random images; returns root."""
  rng = np.random.default_rng(0)
  for name in classes:
    os.makedirs(os.path.join(root, 'train', name))
    for i in range(per_class):
      pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, 'train', name, f'{i:04d}.jpg'))
  return str(root)
