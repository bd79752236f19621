"""Small layers shared by the models.

Bilinear resizing with PyTorch's ``align_corners=True`` semantics lives here:
the U-Net of the paper's code (milesial Pytorch-UNet) upsamples that way, and
``jax.image.resize`` samples at half-pixel centres instead, so it would not
reproduce the reference network nor accept its weights faithfully.
"""

import jax
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


def conv3d(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
           feature_group_count=1, precision=None):
    """``lax.conv_general_dilated`` for ``nn.Conv``'s 3-D convolutions, fast on every backend.

    XLA:CPU runs 3-D convolutions 3-8x slower than the same work as one 2-D
    convolution, so on CPU a plain (undilated, ungrouped, explicitly padded) 3-D
    conv is computed by ``conv3d_as_2d``; elsewhere (cuDNN, TPU) the native op runs.
    Same kernel layout and parameters either way.
    """
    plain = (feature_group_count == 1 and not isinstance(padding, str)
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))))
    if plain and lhs.ndim == 5 and jax.default_backend() == "cpu":
        return conv3d_as_2d(lhs, rhs, window_strides, padding, precision=precision)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision)


def conv3d_as_2d(x: jax.Array, kernel: jax.Array, strides, padding, precision=None) -> jax.Array:
    """A channels-last 3-D convolution (B, T, H, W, C) * (kt, kh, kw, C, O) as one 2-D convolution.

    The kt time-shifted (and time-strided) copies of the padded clip are stacked
    on the channel axis, frames are folded into the batch, and the kernel's time
    taps become input channels: sum_i conv2d(x[t*s + i], k[i]) in a single op.
    """
    kt, kh, kw, c, o = kernel.shape
    (before, after), stride_t = padding[0], strides[0]
    x = jnp.pad(x, ((0, 0), (before, after), (0, 0), (0, 0), (0, 0)))
    t_out = (x.shape[1] - kt) // stride_t + 1
    stacked = jnp.concatenate([x[:, i:i + stride_t * (t_out - 1) + 1:stride_t] for i in range(kt)], axis=-1)
    frames = stacked.reshape((-1,) + stacked.shape[2:])
    kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * c, o)
    y = jax.lax.conv_general_dilated(frames, kernel_2d, tuple(strides[1:]), tuple(padding[1:]),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    return y.reshape((x.shape[0], t_out) + y.shape[1:])
