"""Metrics: SSIM / PSNR (dm-pix) against scikit-image, accuracy and per-class accuracy by hand."""

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ppfer_jax import metrics


def _images(seed=0, shape=(2, 32, 32, 3)):
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=shape).astype(np.float32)
    noisy = np.clip(base + rng.normal(0, 0.1, size=shape), 0, 1).astype(np.float32)
    return base, noisy


def test_ssim_matches_skimage_gaussian_window():
    a, b = _images()
    ours = np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b)))
    theirs = [structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=-1) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_psnr_matches_skimage_and_keeps_leading_axes():
    a, b = _images(1, (2, 3, 16, 16, 3))
    ours = np.asarray(metrics.psnr(jnp.asarray(a), jnp.asarray(b)))
    assert ours.shape == (2, 3)
    theirs = np.array([[peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in zip(ra, rb)]
                       for ra, rb in zip(a, b)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_identical_images_have_ssim_one():
    a, _ = _images(2)
    np.testing.assert_allclose(metrics.ssim(jnp.asarray(a), jnp.asarray(a)), 1.0, atol=1e-5)


def test_per_class_accuracy_on_a_hand_made_example():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 1, 0, 1, 1, 0, 0, 2])
    out = metrics.per_class_accuracy(preds, labels, num_classes=4)
    np.testing.assert_allclose(out[:3], [2 / 3, 1.0, 1 / 3])
    assert np.isnan(out[3])  # no example of class 3
    masked = metrics.per_class_accuracy(preds, labels, num_classes=3, mask=np.array([1, 0, 1, 1, 1, 1, 1, 1]))
    np.testing.assert_allclose(masked, [1.0, 1.0, 1 / 3])


def test_accuracy_counts_only_masked_examples():
    logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = jnp.array([0, 0, 1])
    assert float(metrics.accuracy(logits, labels)) == pytest.approx(1 / 3)
    counts = metrics.correct_counts(logits, labels, jnp.array([True, False, False]))
    assert float(counts["sum"]) == 1.0 and float(counts["count"]) == 1.0
