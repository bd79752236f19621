"""MTCNN's three face-detection networks (Zhang et al. 2016), channels-last, in the layout of facenet-pytorch's
``PNet``/``RNet``/``ONet`` so that its shipped weights convert one to one (``convert.RENAMES['mtcnn_*']``).

The networks only: the image pyramid, the box decoding and the non-maximum suppression run on the host
(``ppfer_jax.face_detection``), where the shapes are dynamic. Inputs are already normalised,
``(pixel - 127.5) / 128``. The module and parameter names are facenet-pytorch's (``conv1``, ``prelu1``,
``dense5_1`` ...); a PReLU's per-channel slope is ``negative_slope``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


class PReLU(nn.Module):
    """PReLU with one slope per channel (torch's ``nn.PReLU(C)``; flax's own has a single slope)."""

    @nn.compact
    def __call__(self, x):
        slope = self.param("negative_slope", nn.initializers.constant(0.25), (x.shape[-1],))
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def ceil_max_pool(x, window: int, stride: int):
    """torch's ``MaxPool2d(window, stride, ceil_mode=True)`` on NHWC: the last, partial window is kept, but only
    when it starts inside the input."""
    pads = []
    for size in x.shape[1:3]:
        out = math.ceil((size - window) / stride) + 1
        if (out - 1) * stride >= size:
            out -= 1
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


def _flatten_like_torch(x):
    """facenet-pytorch flattens NCHW after ``permute(0, 3, 2, 1)``, i.e. in (W, H, C) order; so do we."""
    return jnp.transpose(x, (0, 2, 1, 3)).reshape((x.shape[0], -1))


def _trunk(x, layers, dtype):
    """RNet's and ONet's convolutions: per (channels, kernel, pool window or None) a VALID conv ``conv{k}``, its
    PReLU ``prelu{k}`` and a stride-2 ceil-mode max pool. Called inside a compact module, so the names are its."""
    for k, (channels, kernel, pool) in enumerate(layers, start=1):
        x = PReLU(name=f"prelu{k}")(nn.Conv(channels, (kernel, kernel), padding="VALID", dtype=dtype,
                                            name=f"conv{k}")(x))
        x = ceil_max_pool(x, pool, 2) if pool else x
    return x


class PNet(nn.Module):
    """The proposal network: fully convolutional, one 12x12 window per output cell (stride 2). Returns the box
    regression (N, h, w, 4) and the face probability (N, h, w, 2; channel 1 is "face")."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda c, k, name: nn.Conv(c, (k, k), padding="VALID", dtype=self.dtype, name=name)  # noqa: E731
        x = PReLU(name="prelu1")(conv(10, 3, "conv1")(x))
        x = ceil_max_pool(x, 2, 2)
        x = PReLU(name="prelu2")(conv(16, 3, "conv2")(x))
        x = PReLU(name="prelu3")(conv(32, 3, "conv3")(x))
        probability = nn.softmax(conv(2, 1, "conv4_1")(x).astype(jnp.float32), axis=-1)
        return conv(4, 1, "conv4_2")(x).astype(jnp.float32), probability


class RNet(nn.Module):
    """The refinement network on 24x24 crops: box regression (N, 4) and face probability (N, 2)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _trunk(x, [(28, 3, 3), (48, 3, 3), (64, 2, None)], self.dtype)
        x = PReLU(name="prelu4")(nn.Dense(128, dtype=self.dtype, name="dense4")(_flatten_like_torch(x)))
        probability = nn.softmax(nn.Dense(2, dtype=self.dtype, name="dense5_1")(x).astype(jnp.float32), axis=-1)
        return nn.Dense(4, dtype=self.dtype, name="dense5_2")(x).astype(jnp.float32), probability


class ONet(nn.Module):
    """The output network on 48x48 crops: box regression (N, 4), five landmarks (N, 10: five x then five y, as
    fractions of the box) and face probability (N, 2)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _trunk(x, [(32, 3, 3), (64, 3, 3), (64, 3, 2), (128, 2, None)], self.dtype)
        x = PReLU(name="prelu5")(nn.Dense(256, dtype=self.dtype, name="dense5")(_flatten_like_torch(x)))
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)(x).astype(jnp.float32)  # noqa: E731
        probability = nn.softmax(dense(2, "dense6_1"), axis=-1)
        return dense(4, "dense6_2"), dense(10, "dense6_3"), probability


NETWORKS = {"pnet": PNet, "rnet": RNet, "onet": ONet}
INPUT_SIZES = {"pnet": 12, "rnet": 24, "onet": 48}  # the smallest (PNet) or only (RNet, ONet) input side
