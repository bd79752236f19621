"""Evaluation metrics: accuracy, per-class accuracy, the relabelling check, SSIM and PSNR (dm-pix).

Counting functions return {sum, count} rather than means (``evaluation.evaluator``'s contract), so that
batches padded by ``iterate_once`` (``mask`` False) and batches from several
processes add up exactly; ``ratio`` turns the sums into a number at the end.
"""

from __future__ import annotations

import math
import statistics

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np


def _mask(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    return jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)


def correct_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """{'sum': correct, 'count': examples} of argmax(logits) == labels over the masked examples."""
    m = _mask(labels, mask)
    return {"sum": jnp.sum((jnp.argmax(logits, -1) == labels) * m), "count": jnp.sum(m)}


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    counts = correct_counts(logits, labels, mask)
    return counts["sum"] / jnp.maximum(counts["count"], 1.0)


def per_class_counts(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per true class: {'sum': correct (K,), 'count': examples (K,)} for integer predictions."""
    m = _mask(labels, mask)
    one_hot = jax.nn.one_hot(labels, num_classes) * m[..., None]
    hit = (predictions == labels).astype(jnp.float32)[..., None]
    axes = tuple(range(labels.ndim))
    return {"sum": jnp.sum(one_hot * hit, axis=axes), "count": jnp.sum(one_hot, axis=axes)}


def confusion_counts(logits: jax.Array, labels: jax.Array, num_classes: int,
                     mask: jax.Array | None = None) -> jax.Array:
    """(true class, predicted class) counts over the masked examples, float32 (K, K): sums over batches."""
    m = _mask(labels, mask)
    truth = jax.nn.one_hot(labels, num_classes) * m[..., None]
    predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
    return jnp.einsum("nk,nj->kj", truth.reshape(-1, num_classes), predicted.reshape(-1, num_classes))


def permuted_accuracy(confusion) -> float:
    """Accuracy under the best one-to-one relabelling of the predictions (Hungarian assignment).

    A classifier whose plain accuracy is at chance but whose permuted accuracy is high still tells the classes
    apart: it only calls them by other names (what maximising a frozen controller's CE tends to produce).
    """
    from scipy.optimize import linear_sum_assignment

    confusion = np.asarray(confusion, np.float64)
    rows, columns = linear_sum_assignment(confusion, maximize=True)
    return float(confusion[rows, columns].sum() / max(confusion.sum(), 1.0))


def ridge_accuracy(fit_x, fit_y, test_x, test_y, *, regulariser: float = 1.0) -> float:
    """A linear attacker fitted in closed form: one-vs-rest ridge regression on standardised features (N, D), fit
    on ``(fit_x, fit_y)``, accuracy on ``(test_x, test_y)``. The penalty is ``regulariser`` per fitted row."""
    fit_x, test_x = np.asarray(fit_x, np.float64), np.asarray(test_x, np.float64)
    mean, scale = fit_x.mean(0), fit_x.std(0) + 1e-6
    fit_x, test_x = (fit_x - mean) / scale, (test_x - mean) / scale
    classes = np.unique(fit_y)
    targets = (np.asarray(fit_y)[:, None] == classes[None]).astype(np.float64)
    weights = np.linalg.solve(fit_x.T @ fit_x + regulariser * len(fit_x) * np.eye(fit_x.shape[1]), fit_x.T @ targets)
    return float(np.mean(classes[np.argmax(test_x @ weights, axis=1)] == np.asarray(test_y)))


def per_class_accuracy(predictions, labels, num_classes: int, mask=None) -> np.ndarray:
    """Recall of each true class (NaN for a class with no example): Table 2's columns."""
    counts = jax.device_get(per_class_counts(jnp.asarray(predictions), jnp.asarray(labels), num_classes,
                                             None if mask is None else jnp.asarray(mask)))
    return ratio(counts["sum"], counts["count"])


def ratio(correct, total) -> np.ndarray | float:
    """correct / total, NaN where total is 0."""
    correct, total = np.asarray(correct, np.float64), np.asarray(total, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, correct / np.where(total > 0, total, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


Z95 = statistics.NormalDist().inv_cdf(0.975)


def wilson_interval(share: float, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% at the default z) of a share of ``total`` trials: unlike share +- z * SE it
    stays inside [0, 1] and is not empty at 0 or 1 (a PLR at 0 of 144 clips still bounds the leak)."""
    if total <= 0:
        return math.nan, math.nan
    p, z2 = float(share), z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def ssim(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Per-image SSIM of (..., H, W, C) images (dm-pix: Gaussian window 11, sigma 1.5, k1 .01, k2 .03).

    Images are clipped to [0, max_val] first: SSIM/PSNR are defined for images in that range.
    """
    a = jnp.clip(a.astype(jnp.float32), 0.0, max_val)
    b = jnp.clip(b.astype(jnp.float32), 0.0, max_val)
    return _per_image(lambda x, y: dm_pix.ssim(x, y, max_val=max_val), a, b)


def psnr(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Per-image PSNR in dB of (..., H, W, C) images in [0, max_val] (clipped); dm-pix assumes max_val 1."""
    a = jnp.clip(a.astype(jnp.float32), 0.0, max_val) / max_val
    b = jnp.clip(b.astype(jnp.float32), 0.0, max_val) / max_val
    return _per_image(dm_pix.psnr, a, b)


def _per_image(fn, a, b):
    """dm-pix takes (H, W, C) or (N, H, W, C): any leading axes are flattened and restored."""
    lead = a.shape[:-3]
    out = fn(a.reshape((-1,) + a.shape[-3:]), b.reshape((-1,) + b.shape[-3:]))
    return out.reshape(lead)
