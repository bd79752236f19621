"""Losses of the method: classification CE and the privacy objectives of Algorithm 1.

Every function returns a scalar to *minimise*. ``privacy_loss`` is what the
privacy enhancers minimise against a frozen identity controller:

* ``'neg_ce'``     -- the paper's: maximise CE(controller(F(x)), identity), i.e. minimise -CE.
  Unbounded below: it is driven by pushing the true identity's probability to 0, which
  a controller can satisfy by reading every person as some *other* fixed person -- a
  relabelling an attacker trained afresh reads straight back.
* ``'entropy'``    -- maximise the controller's predictive entropy H(p) (minimise -H).
  Bounded: its optimum is the uniform prediction, -log K. Identical to minimising
  KL(p || uniform) = log K - H(p) (same gradient), so that variant is not offered twice.
* ``'kl_uniform'`` -- minimise KL(uniform || p) = -log K - mean_k log p_k. Bounded below by 0,
  reached only at the uniform prediction; unlike entropy it penalises every near-zero
  class probability, so no identity can be "confidently ruled out".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

PRIVACY_OBJECTIVES = ("neg_ce", "entropy", "kl_uniform")


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy with integer labels (optax)."""
    return _masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels), mask)


def entropy(logits: jax.Array) -> jax.Array:
    """Per-example predictive entropy H(softmax(logits)) in nats."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def kl_uniform_to_p(logits: jax.Array) -> jax.Array:
    """Per-example KL(uniform || softmax(logits)) = -log K - mean_k log p_k (>= 0, 0 iff p uniform)."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.log(logits.shape[-1]) - jnp.mean(log_p, axis=-1)


def privacy_loss(logits: jax.Array, labels: jax.Array, objective: str, mask: jax.Array | None = None) -> jax.Array:
    """The scalar an enhancer minimises so that a frozen controller cannot tell the identity."""
    if objective == "neg_ce":
        return -cross_entropy(logits, labels, mask)
    if objective == "entropy":
        return -_masked_mean(entropy(logits), mask)
    if objective == "kl_uniform":
        return _masked_mean(kl_uniform_to_p(logits), mask)
    raise ValueError(f"config privacy.objective: expected one of {', '.join(PRIVACY_OBJECTIVES)}, got {objective!r}")


def worst_case_privacy_loss(stacked_logits: jax.Array, labels: jax.Array, objective: str) -> jax.Array:
    """The largest ``privacy_loss`` over several adversaries' logits (K, N, classes) of the same examples: an
    enhancer minimising it cannot rest once one adversary is fooled while another still reads identity."""
    return jnp.max(jax.vmap(lambda logits: privacy_loss(logits, labels, objective))(stacked_logits))


def l1(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error (the enhancers' reconstruction pretraining)."""
    return jnp.mean(jnp.abs(prediction.astype(jnp.float32) - target.astype(jnp.float32)))


def group_mmd(codes: jax.Array, groups: jax.Array, num_groups: int,
              widths: tuple[float, ...] = (0.25, 1.0, 4.0)) -> jax.Array:
    """How far each group's codes are distributed from the whole batch's: squared MMD (Gaussian kernels of several
    ``widths`` on codes standardised over the batch, per dimension), averaged over the groups present.

    MMD with a characteristic kernel is 0 only when the distributions are equal, so no classifier, of any kind,
    can tell the groups apart where it is 0 -- a non-adversarial identity penalty, as in the Variational Fair
    Autoencoder (Louizos et al., ICLR 2016). Standardising keeps the encoder from shrinking the codes to lower it.
    """
    z = codes.astype(jnp.float32)
    z = (z - jnp.mean(z, axis=0)) / (jnp.std(z, axis=0) + 1e-6)
    squared = jnp.sum(jnp.square(z[:, None] - z[None]), axis=-1) / z.shape[-1]
    kernel = sum(jnp.exp(-squared / w) for w in widths)
    members = jax.nn.one_hot(groups, num_groups)
    present = jnp.sum(members, axis=0) > 0
    group = members / jnp.maximum(jnp.sum(members, axis=0), 1.0)
    batch = jnp.full((len(z),), 1.0 / len(z))
    per_group = (jnp.einsum("ng,nm,mg->g", group, kernel, group) + batch @ kernel @ batch
                 - 2.0 * jnp.einsum("ng,nm,m->g", group, kernel, batch))
    return jnp.sum(jnp.where(present, per_group, 0.0)) / jnp.maximum(jnp.sum(present), 1)
