"""Small layers shared by the models.

Bilinear resizing with PyTorch's ``align_corners=True`` semantics lives here:
the U-Net of the paper's code (milesial Pytorch-UNet) upsamples that way, and
``jax.image.resize`` samples at half-pixel centres instead, so it would not
reproduce the reference network nor accept its weights faithfully.
"""

import jax.numpy as jnp
import numpy as np


def align_corners_interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of linear-interpolation weights, corners aligned.

    Output sample ``i`` sits at input position ``i * (in_size - 1) / (out_size - 1)``
    so the first and last samples of both grids coincide; each row holds at most
    two non-zero weights that sum to one. Built with numpy because sizes are static,
    which makes it a compile-time constant under ``jit``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    step = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    positions = np.arange(out_size) * step
    left = np.minimum(np.floor(positions).astype(np.int64), max(in_size - 2, 0))
    right = np.minimum(left + 1, in_size - 1)
    right_weight = positions - left
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, left), 1.0 - right_weight)
    np.add.at(matrix, (rows, right), right_weight)
    return matrix


def resize_bilinear_align_corners(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """Resize NHWC ``x`` to (height, width) like ``F.interpolate(mode='bilinear', align_corners=True)``.

    Separable: one interpolation matrix per spatial axis, applied with einsum, so
    the op is differentiable, jit-able and runs on the matrix units of accelerators.
    """
    rows = jnp.asarray(align_corners_interpolation_matrix(x.shape[1], height), dtype=x.dtype)
    cols = jnp.asarray(align_corners_interpolation_matrix(x.shape[2], width), dtype=x.dtype)
    x = jnp.einsum("Hh,bhwc->bHwc", rows, x)
    return jnp.einsum("Ww,bhwc->bhWc", cols, x)


def upsample_bilinear_align_corners(x: jnp.ndarray, scale: int = 2) -> jnp.ndarray:
    """``nn.Upsample(scale_factor=scale, mode='bilinear', align_corners=True)`` on NHWC ``x``."""
    return resize_bilinear_align_corners(x, x.shape[1] * scale, x.shape[2] * scale)
