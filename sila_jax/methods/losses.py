"""The methods' losses: plain cross-entropy, SiLa's (`twin`, `joint`, head-to-head KL),
DML's mimicry, ONE's, collaborative learning's (CL-ILR) and BYOT's.

Shapes: logits (B, C), Siamese logits or other branches' (K, B, C), integer labels (B,).
"""
import jax
import jax.numpy as jnp
import optax


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """Integer labels (B,) -> smoothed one-hot targets (B, C)."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  return one_hot * (1.0 - smoothing) + smoothing / num_classes


def kl_divergence(target_logits: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """T^2 * KL(stop_gradient(p_target) || p) with p = softmax(logits / T): (..., C) -> (...)."""
  target_log_p = jax.nn.log_softmax(jax.lax.stop_gradient(target_logits) / temperature)
  log_p = jax.nn.log_softmax(logits / temperature)
  return temperature**2 * jnp.sum(jnp.exp(target_log_p) * (target_log_p - log_p), axis=-1)


def twin_loss(logits, siamese_logits, targets, weight):
  """CE(z, y) + weight * sum_k CE(z'_k, y): per-example losses (B,)."""
  main = optax.softmax_cross_entropy(logits, targets)
  return main + weight * jnp.sum(optax.softmax_cross_entropy(siamese_logits, targets), axis=0)


def joint_loss(logits, siamese_logits, targets, weight):
  """One softmax over [z, z'_1, ..., z'_K] ((K+1) C classes): per-example losses (B,).

  The target puts mass 1/(1 + weight K) on the main copy of y and weight/(1 + weight K)
  on each Siamese copy; weight = 1, K = 1 is SILA.md's [y, y] / 2.
  """
  num_heads = siamese_logits.shape[0]
  joint_logits = jnp.concatenate([logits, *siamese_logits], axis=-1)
  copy_weights = [1.0] + [weight] * num_heads
  joint_targets = jnp.concatenate([w * targets for w in copy_weights], axis=-1)
  return optax.softmax_cross_entropy(joint_logits, joint_targets / sum(copy_weights))


def plain_loss(logits, labels, *, label_smoothing=0.0):
  """Mean cross-entropy of logits (B, C) against integer labels (B,), smoothed:
  (loss, {'loss': loss, 'loss_main': loss})."""
  targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
  loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  return loss, {'loss': loss, 'loss_main': loss}


VARIANTS = {'twin': twin_loss, 'joint': joint_loss}  # sila.variant -> per-example loss.


def sila_loss(logits, siamese_logits, labels, *, variant='twin', weight=1.0, kl_weight=0.0,
              temperature=1.0, label_smoothing=0.0):
  """Mean SiLa loss over the batch and its parts.

  Args:
    logits: main-head logits (B, C).
    siamese_logits: Siamese-head logits (K, B, C).
    labels: integer labels (B,).
    variant: a VARIANTS key (config checks reject others).
  Returns:
    (loss, metrics): a scalar, and a dict of scalars: `loss_main` (main-head CE),
    `loss_siamese` (mean CE over heads) and `loss_kl`.
  """
  targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
  per_example = VARIANTS[variant](logits, siamese_logits, targets, weight)
  kl = jnp.sum(kl_divergence(siamese_logits, logits[None], temperature)
               + kl_divergence(logits[None], siamese_logits, temperature), axis=0)
  loss = jnp.mean(per_example + kl_weight * kl)
  return loss, {
      'loss': loss,
      'loss_main': jnp.mean(optax.softmax_cross_entropy(logits, targets)),
      'loss_siamese': jnp.mean(optax.softmax_cross_entropy(siamese_logits, targets)),
      'loss_kl': jnp.mean(kl),
  }


def mimicry_loss(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """DML's mimicry term of each peer: logits (K, B, C) of K >= 2 peers -> (K, B).

  Peer i's term is (1 / (K - 1)) sum_{j != i} T^2 KL(stop_gradient(p_j) || p_i), with
  p = softmax(logits / T): it pulls peer i towards the others and never the reverse.
  """
  num_peers = logits.shape[0]
  # pairwise[i, j] = T^2 KL(sg(p_j) || p_i); the diagonal is masked so that not even
  # rounding in KL(p_i || p_i) reaches the gradient.
  pairwise = kl_divergence(logits[None, :], logits[:, None], temperature)
  off_diagonal = 1.0 - jnp.eye(num_peers)[:, :, None]
  return jnp.sum(pairwise * off_diagonal, axis=1) / (num_peers - 1)


def gated_ensemble(every: jax.Array, gate: jax.Array) -> jax.Array:
  """ONE's ensemble teacher, the gate-weighted sum of the branches' logits: every (m, B, C),
  gate (B, m) -> (B, C)."""
  return jnp.einsum('bm,mbc->bc', gate, every)


def mean_prediction(logits: jax.Array) -> jax.Array:
  """The ensemble of classifiers' logits (n, B, C) as scores (B, C) whose softmax is the
  mean of their softmaxes: the log of the mean probability."""
  return jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=0) - jnp.log(len(logits))


def one_loss(logits, branches, gate, labels, *, temperature=3.0, label_smoothing=0.0):
  """ONE (Lan et al. 2018): every branch's CE, the gated ensemble's CE, and each branch's
  distillation from the ensemble, T^2 KL(sg(p_e,T) || p_i,T).

  Args:
    logits: branch 0's logits (B, C); branches: the other branches' (m - 1, B, C); gate:
      (B, m), each row summing to 1; labels: (B,).
  Returns:
    (loss, metrics): `loss_main` (branch 0's CE), `loss_branches` (the mean CE of the other
    branches), `loss_ensemble` and `loss_distill` (the sum over branches, batch mean).
  """
  targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
  every = jnp.concatenate([logits[None], branches])  # (m, B, C)
  ensemble = gated_ensemble(every, gate)
  ce = optax.softmax_cross_entropy(every, targets)  # (m, B)
  ensemble_ce = optax.softmax_cross_entropy(ensemble, targets)
  distill = jnp.sum(kl_divergence(ensemble[None], every, temperature), axis=0)
  loss = jnp.mean(jnp.sum(ce, axis=0) + ensemble_ce + distill)
  return loss, {'loss': loss, 'loss_main': jnp.mean(ce[0]), 'loss_branches': jnp.mean(ce[1:]),
                'loss_ensemble': jnp.mean(ensemble_ce), 'loss_distill': jnp.mean(distill)}


def clilr_loss(logits, branches, labels, *, beta=0.5, temperature=2.0, label_smoothing=0.0):
  """Collaborative learning (Song & Chai 2018): head i's loss is beta CE(z_i, y) +
  (1 - beta) T^2 KL(sg(q_-i) || p_i,T), q_-i the mean over heads j != i of softmax(z_j / T);
  the heads' losses are summed.

  Args:
    logits: head 0's logits (B, C); branches: the other heads' (m - 1, B, C), m >= 2.
  Returns:
    (loss, metrics): `loss_main` (head 0's CE), `loss_branches` (the other heads' mean CE)
    and `loss_distill` (the sum over heads of the KL terms, batch mean).
  """
  targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
  every = jnp.concatenate([logits[None], branches])  # (m, B, C)
  num_heads = every.shape[0]
  probs = jax.nn.softmax(jax.lax.stop_gradient(every) / temperature)
  others = (jnp.sum(probs, axis=0, keepdims=True) - probs) / (num_heads - 1)  # q_-i: (m, B, C)
  log_p = jax.nn.log_softmax(every / temperature)
  distill = temperature**2 * jnp.sum(
      jax.scipy.special.xlogy(others, others) - others * log_p, axis=-1)  # (m, B)
  ce = optax.softmax_cross_entropy(every, targets)
  loss = jnp.mean(jnp.sum(beta * ce + (1.0 - beta) * distill, axis=0))
  return loss, {'loss': loss, 'loss_main': jnp.mean(ce[0]), 'loss_branches': jnp.mean(ce[1:]),
                'loss_distill': jnp.mean(jnp.sum(distill, axis=0))}


def byot_loss(logits, shallow_logits, shallow_features, deep_features, labels, *, alpha=0.1,
              temperature=3.0, feature_weight=1e-6, label_smoothing=0.0):
  """Be Your Own Teacher (Zhang et al. 2019): the deepest classifier's CE, and for each
  shallow classifier i (1 - alpha) CE(z_i, y) + alpha T^2 KL(sg(p_deep,T) || p_i,T) +
  feature_weight ||F_i - sg(F_deep)||^2. alpha = feature_weight = 0 is deep supervision.

  Args:
    logits: the deepest classifier's (B, C); shallow_logits: (S, B, C); shallow_features:
      (S, B, D); deep_features: (B, D).
  Returns:
    (loss, metrics): `loss_main` (the deepest CE), `loss_shallow` (the shallow classifiers'
    mean CE), `loss_distill` and `loss_features` (each summed over the shallow ones).
  """
  targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
  main = optax.softmax_cross_entropy(logits, targets)
  shallow = optax.softmax_cross_entropy(shallow_logits, targets)  # (S, B)
  distill = kl_divergence(logits[None], shallow_logits, temperature)
  hint = jnp.sum(jnp.square(shallow_features - jax.lax.stop_gradient(deep_features)), axis=-1)
  per_example = main + jnp.sum((1.0 - alpha) * shallow + alpha * distill
                               + feature_weight * hint, axis=0)
  loss = jnp.mean(per_example)
  return loss, {'loss': loss, 'loss_main': jnp.mean(main), 'loss_shallow': jnp.mean(shallow),
                'loss_distill': jnp.mean(jnp.sum(distill, axis=0)),
                'loss_features': jnp.mean(jnp.sum(hint, axis=0))}
