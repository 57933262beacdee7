"""SiLa losses against hand computations, and gradients reaching every Siamese head."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sila_jax.methods import losses
from sila_jax.models import model as model_lib

LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
SIAMESE = np.array([[[1.0, 1.0, 0.0], [-0.5, 2.0, 0.5]]])  # K = 1.
LABELS = np.array([0, 2])


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


def hand_ce(logits, labels):
  return -log_softmax(logits)[np.arange(len(labels)), labels]


def test_twin_loss_by_hand():
  loss, metrics = losses.sila_loss(LOGITS, SIAMESE, LABELS, variant='twin', weight=0.7)
  main, siamese = hand_ce(LOGITS, LABELS), hand_ce(SIAMESE[0], LABELS)
  np.testing.assert_allclose(loss, np.mean(main + 0.7 * siamese), rtol=1e-6)
  np.testing.assert_allclose(metrics['loss_main'], main.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics['loss_siamese'], siamese.mean(), rtol=1e-6)


def test_joint_loss_by_hand():
  loss, _ = losses.sila_loss(LOGITS, SIAMESE, LABELS, variant='joint')
  joint = log_softmax(np.concatenate([LOGITS, SIAMESE[0]], axis=-1))
  rows = np.arange(2)
  expected = -0.5 * joint[rows, LABELS] - 0.5 * joint[rows, 3 + LABELS]
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-6)


def test_joint_loss_weights_the_copies():
  siamese = np.concatenate([SIAMESE, SIAMESE[:, ::-1]])  # K = 2.
  loss, _ = losses.sila_loss(LOGITS, siamese, LABELS, variant='joint', weight=0.5)
  joint = log_softmax(np.concatenate([LOGITS, *siamese], axis=-1))
  rows, w = np.arange(2), np.array([1.0, 0.5, 0.5]) / 2.0
  expected = -sum(w[k] * joint[rows, 3 * k + LABELS] for k in range(3))
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-6)


def test_consistency_kl_by_hand():
  t, beta = 2.0, 0.3
  loss, metrics = losses.sila_loss(LOGITS, SIAMESE, LABELS, weight=1.0, kl_weight=beta,
                                   temperature=t)
  log_p, log_q = log_softmax(LOGITS / t), log_softmax(SIAMESE[0] / t)
  kl = (np.sum(np.exp(log_q) * (log_q - log_p), -1) + np.sum(np.exp(log_p) * (log_p - log_q), -1))
  kl *= t**2
  np.testing.assert_allclose(metrics['loss_kl'], kl.mean(), rtol=1e-5)
  twin = hand_ce(LOGITS, LABELS) + hand_ce(SIAMESE[0], LABELS)
  np.testing.assert_allclose(loss, np.mean(twin + beta * kl), rtol=1e-5)


def test_label_smoothing_applies_to_every_term():
  eps = 0.1
  loss, _ = losses.sila_loss(LOGITS, SIAMESE, LABELS, label_smoothing=eps)
  target = np.eye(3)[LABELS] * (1 - eps) + eps / 3
  expected = (-np.sum(target * log_softmax(LOGITS), -1)
              - np.sum(target * log_softmax(SIAMESE[0]), -1))
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-6)


def test_plain_loss_is_cross_entropy():
  loss, metrics = losses.plain_loss(LOGITS, LABELS)
  np.testing.assert_allclose(loss, hand_ce(LOGITS, LABELS).mean(), rtol=1e-6)
  assert set(metrics) == {'loss', 'loss_main'}


@pytest.mark.slow
@pytest.mark.parametrize('variant', losses.VARIANTS)
def test_gradients_reach_every_siamese_head(tiny_config, variant):
  tiny_config.sila.update(num_heads=3, attach='stage2', variant=variant)
  model = model_lib.create_model(tiny_config)
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  labels = jnp.array([0, 1, 2, 3])
  variables = model.init(jax.random.PRNGKey(0), images, train=False)

  def loss_fn(params):
    (logits, siamese), _ = model.apply({**variables, 'params': params}, images, train=True,
                                       mutable=['batch_stats'])
    return losses.sila_loss(logits, siamese, labels, variant=variant)[0]

  grads = jax.grad(loss_fn)(variables['params'])
  chex.assert_trees_all_equal_structs(grads, variables['params'])
  for k in range(3):
    for part in (f'head_{k}', f'adapter_{k}'):
      norms = jax.tree_util.tree_leaves(
          jax.tree_util.tree_map(jnp.linalg.norm, grads['siamese_heads'][part]))
      assert all(n > 0 for n in norms), (part, norms)
