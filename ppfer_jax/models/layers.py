"""Small layers shared by the models: the convolution every model's ``nn.Conv`` runs (with its CPU lowerings),
and bilinear resizing.

Bilinear resizing with PyTorch's ``align_corners=True`` semantics lives here:
the U-Net of the paper's code (milesial Pytorch-UNet) upsamples that way, and
``jax.image.resize`` samples at half-pixel centres instead, so it would not
reproduce the reference network nor accept its weights faithfully.
"""

import itertools

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


# Patches pay on CPU only for wide inputs: there the native convolution of a map a few pixels wide is up to 45x
# slower; on narrower inputs it is as fast or faster and the taps only add compile time (benchmarks/RESULTS.md). No
# conv of the synthetic configs' networks is that wide (tests/test_layers.py), so their numbers are XLA's own.
PATCHES_ON_CPU = True
SMALL_MAP = 4  # output side (pixels) at or below which XLA:CPU's convolution leaves its fast path
WIDE_INPUT = 256  # input channels from which a small-map or 1x1 conv runs as patches times a matrix on CPU


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, precision=None):
    """``lax.conv_general_dilated`` for ``nn.Conv`` (its ``conv_general_dilated``), with CPU lowerings.

    On XLA:CPU, with ``PATCHES_ON_CPU``, a convolution of at least ``WIDE_INPUT`` input channels whose output map
    is small (a side of ``SMALL_MAP`` pixels or less: the last stages of ResNet-50 and R3D-18 at 32-64 px) is
    computed with convolutions XLA's fast path does not take -- its kernel gradient with batch and feature axes
    swapped, the input gradient of a strided conv base-dilated -- up to 45x slower than the same work as a matrix
    product; a wide 1x1 stride-1 conv is a matrix product anyway. So on CPU such a plain (undilated, ungrouped)
    channels-last convolution is computed as patches times a matrix (``conv_as_matmul``). A 3-D one otherwise runs
    as one 2-D convolution over time-shifted copies (``conv3d_as_2d``); elsewhere (cuDNN, TPU) the native op
    runs. Same kernel layout and parameters either way.
    """
    spatial = lhs.ndim - 2
    channels_last = dimension_numbers == jax.lax.conv_dimension_numbers(  # as nn.Conv passes them
        lhs.shape, rhs.shape, ("N" + "DHW"[-spatial:] + "C", "DHW"[-spatial:] + "IO", "N" + "DHW"[-spatial:] + "C"))
    if padding == "VALID":
        padding = ((0, 0),) * spatial
    plain = (feature_group_count == 1 and not isinstance(padding, str) and channels_last
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))))
    if plain and jax.default_backend() == "cpu":
        window = rhs.shape[:-2]
        out = [(n + before + after - k) // s + 1
               for n, (before, after), k, s in zip(lhs.shape[1:-1], padding, window, window_strides)]
        pointwise = all(k == 1 for k in window) and all(s == 1 for s in window_strides)
        wide = rhs.shape[-2] >= WIDE_INPUT
        if PATCHES_ON_CPU and wide and (min(out[-2:]) <= SMALL_MAP or pointwise):
            return conv_as_matmul(lhs, rhs, window_strides, padding, precision=precision)
        if spatial == 3:
            return conv3d_as_2d(lhs, rhs, window_strides, padding, precision=precision)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision)


def conv3d_as_2d(x: jax.Array, kernel: jax.Array, strides, padding, precision=None) -> jax.Array:
    """A channels-last 3-D convolution (B, T, H, W, C) * (kt, kh, kw, C, O) as one 2-D convolution.

    The kt time-shifted (and time-strided) copies of the padded clip are stacked on the channel axis, frames are
    folded into the batch, and the kernel's time taps become input channels: sum_i conv2d(x[t*s + i], k[i]).
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


def conv_as_matmul(x: jax.Array, kernel: jax.Array, strides, padding, precision=None) -> jax.Array:
    """A channels-last N-D convolution (B, *spatial, C) * (*window, C, O) as patches times a matrix.

    The padded input's window taps (strided slices) are stacked on the channel axis, in the kernel's
    (*window, C) order, and multiplied by the kernel reshaped to (taps * C, O): one matrix product.
    """
    window, out_channels = kernel.shape[:-2], kernel.shape[-1]
    x = jnp.pad(x, ((0, 0), *(tuple(p) for p in padding), (0, 0)))
    out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], window, strides)]

    def tap(offset):
        return x[(slice(None),) + tuple(slice(o, o + s * (m - 1) + 1, s) for o, s, m in zip(offset, strides, out))]

    taps = [tap(offset) for offset in itertools.product(*(range(k) for k in window))]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return jnp.dot(patches, kernel.reshape(-1, out_channels), precision=precision)
