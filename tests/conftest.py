"""Test set-up, before JAX starts: 8 fake CPU devices and one compilation cache for the
session (the processes the tests start inherit both); then small image
folders, a small fast configuration, and the two tiers of the suite (`-m "not slow"` is the
inner loop)."""
import os
import shutil
import tempfile


def _xla_flags(*extra):
  """XLA_FLAGS with `extra` added to those already set (each once: xdist's workers inherit
  the controller's and import this file again)."""
  flags = os.environ.get('XLA_FLAGS', '').split()
  return ' '.join(flags + [flag for flag in extra if flag not in flags])


# Compiling is most of the suite's time, and LLVM's optimisation of XLA:CPU's code most of
# compiling: without it the inner loop (`-m "not slow"`) took 97 s instead of 140 on 2 cores.
# Tests compare computations compiled alike, so the level changes no result they check.
os.environ['XLA_FLAGS'] = _xla_flags('--xla_force_host_platform_device_count=8',
                                     '--xla_backend_optimization_level=0')
# Many tests compile the same programs (in this process, in the other xdist worker, and in
# the train.py processes they start, which inherit the environment): JAX's persistent cache
# compiles each once per session. A fresh directory each session, made by the first process
# (xdist's controller; the workers inherit it); an existing setting is kept.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='sila_jax_test_cache_')
  os.environ['SILA_JAX_TEST_CACHE_MADE_BY'] = str(os.getpid())
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # noqa: E402

from tests.helpers import make_folder, make_tiny_config  # noqa: E402


def pytest_configure(config):
  # Under -n, xdist's default 'load' deals the first quarter of the tests out round-robin, so
  # the tests that read one module-scoped trained run land on both workers and each trains it.
  # 'loadgroup' keeps each xdist_group on one worker and deals out every other test one at a
  # time as a worker frees up.
  if getattr(config.option, 'dist', 'no') == 'load':
    config.option.dist = 'loadgroup'


def pytest_unconfigure(config):
  if os.environ.get('SILA_JAX_TEST_CACHE_MADE_BY') == str(os.getpid()):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  # The slow tests first, so that under -n the short ones fill the workers' ends evenly.
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)


@pytest.fixture(scope='session')
def ten_class_folder(tmp_path_factory):
  """An ImageFolder tree of 10 classes x 4 random 32x32 JPEGs (40 images)."""
  return make_folder(tmp_path_factory.mktemp('ten_classes'), per_class=4,
                     classes=[f'class_{i}' for i in range(10)])


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """An ImageFolder tree of 3 classes x 20 random 32x32 JPEGs (60 images), read only."""
  return make_folder(tmp_path_factory.mktemp('data'), per_class=20)


@pytest.fixture
def tiny_config(ten_class_folder):
  """helpers.make_tiny_config on ten_class_folder: ResNet-8/4, 16-image batches, 3 steps."""
  return make_tiny_config(ten_class_folder)
