"""Privacy objectives and CE: analytic values and gradient directions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppfer_jax import losses

K = 7
LABELS = jnp.array([0, 3, 6])


def test_entropy_of_uniform_prediction_is_log_k():
    logits = jnp.zeros((3, K))
    np.testing.assert_allclose(losses.entropy(logits), math.log(K), rtol=1e-6)
    np.testing.assert_allclose(losses.privacy_loss(logits, LABELS, "entropy"), -math.log(K), rtol=1e-6)


def test_entropy_is_below_log_k_elsewhere_and_its_gradient_vanishes_at_uniform():
    logits = jax.random.normal(jax.random.key(0), (3, K))
    assert np.all(np.asarray(losses.entropy(logits)) < math.log(K))
    grad = jax.grad(lambda z: losses.privacy_loss(z, LABELS, "entropy"))(jnp.zeros((3, K)))
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def test_kl_to_uniform_is_zero_at_uniform_and_positive_elsewhere():
    np.testing.assert_allclose(losses.privacy_loss(jnp.full((3, K), 2.5), LABELS, "kl_uniform"), 0.0, atol=1e-6)
    logits = jax.random.normal(jax.random.key(1), (3, K))
    log_p = jax.nn.log_softmax(logits)
    expected = jnp.mean(jnp.sum((1.0 / K) * (jnp.log(1.0 / K) - log_p), axis=-1))
    np.testing.assert_allclose(losses.privacy_loss(logits, LABELS, "kl_uniform"), expected, rtol=1e-5)
    assert float(expected) > 0


def test_neg_ce_is_minus_ce_and_descent_lowers_the_true_class_logit():
    logits = jax.random.normal(jax.random.key(2), (3, K))
    ce = losses.cross_entropy(logits, LABELS)
    np.testing.assert_allclose(losses.privacy_loss(logits, LABELS, "neg_ce"), -ce, rtol=1e-6)
    grad = jax.grad(lambda z: losses.privacy_loss(z, LABELS, "neg_ce"))(logits)
    true_grad = np.asarray(grad)[np.arange(3), np.asarray(LABELS)]
    assert np.all(true_grad > 0)  # gradient descent pushes the true identity's logit down
    stepped = logits - 1.0 * grad
    assert float(losses.cross_entropy(stepped, LABELS)) > float(ce)


def test_cross_entropy_matches_hand_computation_and_honours_the_mask():
    logits = jnp.array([[2.0, 0.0], [0.0, 0.0]])
    labels = jnp.array([0, 1])
    per = [math.log(1 + math.exp(-2.0)), math.log(2.0)]
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), np.mean(per), rtol=1e-6)
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, jnp.array([True, False])), per[0], rtol=1e-6)


def test_unknown_objective_names_the_config_key():
    with pytest.raises(ValueError, match="privacy.objective"):
        losses.privacy_loss(jnp.zeros((1, K)), jnp.array([0]), "max_ce")


def test_group_mmd_matches_a_direct_sum_and_tells_shifted_groups_from_mixed_ones():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(18, 3)).astype(np.float32)
    groups = np.repeat(np.arange(3), 6)
    z = (codes - codes.mean(0)) / (codes.std(0) + 1e-6)

    def kernel(a, b):
        d = np.sum((a - b) ** 2) / 3
        return sum(np.exp(-d / w) for w in (0.25, 1.0, 4.0))

    def mmd(x, y):  # biased estimator, written out
        return (np.mean([kernel(a, b) for a in x for b in x]) + np.mean([kernel(a, b) for a in y for b in y])
                - 2 * np.mean([kernel(a, b) for a in x for b in y]))

    # group 3 of 4 is absent: the mean runs over the groups present
    expected = np.mean([mmd(z[groups == g], z) for g in range(3)])
    assert float(losses.group_mmd(jnp.asarray(codes), jnp.asarray(groups), 4)) == pytest.approx(expected, rel=1e-5)
    shifted = codes + 3.0 * groups[:, None]
    assert float(losses.group_mmd(jnp.asarray(shifted), jnp.asarray(groups), 3)) > 3 * expected
