"""The open-set verification check: its pair statistics against independent definitions."""

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from ppfer_jax import verification


def test_roc_auc_is_the_share_of_correctly_ordered_pairs_with_ties_halved():
    rng = np.random.default_rng(0)
    positive = np.round(rng.normal(1.0, 1.0, 40), 1)  # rounded: many ties
    negative = np.round(rng.normal(0.0, 1.0, 55), 1)
    pairwise = np.mean((positive[:, None] > negative[None]) + 0.5 * (positive[:, None] == negative[None]))
    assert verification.roc_auc(positive, negative) == pytest.approx(pairwise, abs=1e-12)
    u = mannwhitneyu(positive, negative).statistic
    assert verification.roc_auc(positive, negative) == pytest.approx(u / (40 * 55))
    assert verification.roc_auc(positive + 100, negative) == 1.0
    assert verification.roc_auc(negative, negative) == pytest.approx(0.5)


def test_the_equal_error_threshold_balances_false_rejects_and_false_accepts():
    rng = np.random.default_rng(1)
    positive, negative = rng.normal(1.0, 1.0, 2000), rng.normal(-1.0, 1.0, 2000)
    t = verification.equal_error_threshold(positive, negative)
    assert t == pytest.approx(0.0, abs=0.1)  # symmetric classes: the midpoint
    assert np.mean(positive < t) == pytest.approx(np.mean(negative >= t), abs=0.01)
    # separable scores: a threshold that makes no error at all
    t = verification.equal_error_threshold(np.array([0.8, 0.9]), np.array([0.1, 0.2, 0.3]))
    assert 0.3 < t <= 0.8


def test_pairs_split_by_person_and_the_numbers_of_a_perfect_and_a_blind_verifier():
    people = np.array([0, 0, 1, 1, 2])
    scores = np.arange(25, dtype=float).reshape(5, 5)
    same, different = verification.same_and_different(scores, people)
    np.testing.assert_array_equal(same, [scores[0, 1], scores[2, 3]])
    assert len(different) == 10 - 2
    # one embedding per person: the verifier accepts every same-person pair and the same clip, rejects the rest
    basis = np.eye(3)[people]
    perfect = verification.verification_numbers(basis, basis, people, threshold=0.5)
    assert perfect["same_clip_reject"] == 0.0 and perfect["same_person_reject"] == 0.0 and perfect["auc"] == 1.0
    # every anonymised frame the same face: same-clip pairs rejected where the original differs, AUC 0.5
    blind = verification.verification_numbers(basis, np.tile([[0.0, 0.0, 1.0]], (5, 1)), people, threshold=0.5)
    assert blind["auc"] == 0.5 and blind["same_clip_reject"] == pytest.approx(4 / 5)
