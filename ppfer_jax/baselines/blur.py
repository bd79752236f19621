"""Gaussian-blur baselines (paper Table 1 "Gaussian Blur 1 / 2"): every frame blurred with one sigma.

The paper picks two sigmas: Blur 1's privacy leakage matches PPFER's, Blur 2's utility accuracy matches
PPFER's. Here both are found by bisection on the val split (``ppfer_jax/search.py``): Blur 1 on V_pl's PLR
(cheap: one val pass per sigma), Blur 2 on the val accuracy of an F_u trained on the blurred clips (each
evaluation trains one; finished ones are reused). The blur is dm-pix's separable Gaussian, truncated at 3
sigma as scipy.ndimage does, with edge-replicated borders so the frame's rim does not darken.
"""

from __future__ import annotations

from collections.abc import Callable

import dm_pix
import jax
import jax.numpy as jnp

from ppfer_jax import metrics
from ppfer_jax.anonymised import map_clips
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import pick_frames, to_float, to_uint8
from ppfer_jax.search import Search, bisect


def kernel_radius(sigma: float) -> int:
    """The kernel's half-width: scipy.ndimage's rule for truncate=3, int(3 sigma + 0.5)."""
    return int(3.0 * sigma + 0.5)


def gaussian_blur(frames: jax.Array, sigma: float) -> jax.Array:
    """Float frames (..., H, W, C) blurred with a Gaussian of ``sigma`` pixels (a Python float: it sets the
    kernel's size); sigma 0 returns them unchanged."""
    if sigma < 0:
        raise ValueError(f"gaussian_blur: sigma must be >= 0 pixels, got {sigma!r}")
    if not jnp.issubdtype(frames.dtype, jnp.floating):
        raise ValueError(f"gaussian_blur: frames must be float images in [0, 1], got dtype {frames.dtype}")
    if frames.ndim < 3:
        raise ValueError(f"gaussian_blur: frames must be (..., H, W, C), got shape {frames.shape}")
    radius = kernel_radius(sigma)
    if radius == 0:
        return frames
    flat = frames.reshape((-1,) + frames.shape[-3:])
    padded = jnp.pad(flat, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    blurred = dm_pix.gaussian_blur(padded, sigma, kernel_size=2 * radius + 1, padding="VALID")
    return blurred.reshape(frames.shape).astype(frames.dtype)


# -- the rows: a sigma per row, found by bisection on the val split (``ppfer_jax/reproduce.py`` runs them)


def method_name(sigma: float) -> str:
    """The anonymisation method of one sigma, rounded to 4 significant digits (it names stage directories)."""
    return f"blur/sigma_{float(f'{sigma:.4g}'):g}"


def sigma_of(method: str) -> float:
    return float(method.rsplit("sigma_", 1)[1])


def anonymised_clips(ctx, split: str, method: str):
    """A split with every frame blurred with the method's sigma, stored as uint8 video."""
    sigma = sigma_of(method)
    return map_clips(ctx, ctx.source(split),
                         lambda video: to_uint8(gaussian_blur(to_float(video), sigma)))


def val_plr(ctx, sigma: float) -> float:
    """V_pl's identity accuracy on the val split's eval frames blurred with ``sigma`` (as uint8)."""
    v_pl = ctx.network("v_pl")

    def counts(_, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        blurred = to_float(to_uint8(gaussian_blur(frame, sigma)))
        return {"plr": metrics.correct_counts(ctx.nets.apply("v_pl", v_pl, blurred), batch["identity"],
                                              batch["mask"])}
    return float(evaluator(ctx, counts, "val")(None)["plr"])


def plr_search(ctx, target: float) -> Search:
    """Blur 1: the sigma whose val PLR matches ``target`` (PPFER's), by bisection over ``sigma_range``."""
    b = ctx.config.baselines.blur

    def plr(sigma: float) -> float:
        value = val_plr(ctx, sigma_of(method_name(sigma)))
        print(f"blur1 search: sigma {sigma_of(method_name(sigma)):g} px -> val PLR {100 * value:.1f}% "
              f"(target {100 * target:.1f}%)")
        return value
    return bisect(plr, *b.sigma_range, target, max_evaluations=b.plr_evaluations, tolerance=b.plr_tolerance)


def acc_search(ctx, target: float, val_acc: Callable[[str], float]) -> Search:
    """Blur 2: the sigma whose val ACC matches ``target`` (PPFER's); ``val_acc(method)`` trains F_u on clips
    blurred that way (a finished one is read back) and returns its val accuracy."""
    b = ctx.config.baselines.blur

    def acc(sigma: float) -> float:
        value = val_acc(method_name(sigma))
        print(f"blur2 search: sigma {sigma_of(method_name(sigma)):g} px -> val ACC {100 * value:.1f}% "
              f"(target {100 * target:.1f}%)")
        return value
    return bisect(acc, *b.sigma_range, target, max_evaluations=b.acc_evaluations, tolerance=b.acc_tolerance)
