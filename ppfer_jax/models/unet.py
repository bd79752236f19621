"""U-Net: the privacy enhancers F_lpr / F_hpr and the recovery attacker.

Same layout as the paper's code, which takes milesial/Pytorch-UNet: DoubleConv
blocks, max-pool down path, bilinear (align-corners) or transposed-conv up path,
skip concatenation [skip, upsampled], 1x1 output conv. Submodule names follow
milesial's (inc, down1.., up1.., outc) so PyTorch weights map over by name.

The output head is a choice, not a constant: with orthonormal Haar on [0, 1]
images the LL band lies in [0, 2] and the detail bands in [-1, 1], and the
official sigmoid head cannot produce a negative detail coefficient. The
'residual' head adds a bounded change to the input (zero-initialised, so the
network starts as the identity map): an enhancer that starts from its band
exactly, where 100-600 steps of L1 pretraining left the detail bands blurred.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppfer_jax.models.layers import conv, upsample_bilinear_align_corners

HEADS = ("linear", "sigmoid", "tanh", "residual")


def apply_head(logits: jnp.ndarray, head: str, out_range: tuple[float, float]) -> jnp.ndarray:
    """Map raw outputs to the band's range: 'linear' leaves them unbounded,
    'sigmoid' and 'tanh' squash them into ``out_range`` (they differ in slope at the centre).
    ('residual' needs the input: see ``UNet``.)"""
    low, high = out_range
    if head == "linear":
        return logits
    if head == "sigmoid":
        return low + (high - low) * jax.nn.sigmoid(logits)
    if head == "tanh":
        return 0.5 * (low + high) + 0.5 * (high - low) * jnp.tanh(logits)
    raise ValueError(f"UNet.head: expected one of {HEADS}, got {head!r}")


def pad_to_match(x: jnp.ndarray, reference: jnp.ndarray) -> jnp.ndarray:
    """Zero-pad x (NHWC) to reference's height and width, the extra pixel going
    bottom/right as in milesial's F.pad; needed when a skip had an odd size."""
    pad_h = reference.shape[1] - x.shape[1]
    pad_w = reference.shape[2] - x.shape[2]
    return jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))


class DoubleConv(nn.Module):
    """(conv3x3 -> BatchNorm -> ReLU) twice; ``mid_channels`` narrows the first conv in the bilinear up path."""

    out_channels: int
    mid_channels: int | None = None
    conv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        widths = (self.mid_channels or self.out_channels, self.out_channels)
        for index, width in enumerate(widths, start=1):
            x = nn.Conv(width, (3, 3), padding=1, use_bias=self.conv_bias, dtype=self.dtype,
                        param_dtype=jnp.float32, conv_general_dilated=conv, name=f"conv{index}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32, name=f"bn{index}")(x)
            x = nn.relu(x)
        return x


class Down(nn.Module):
    """Halve the resolution (2x2 max-pool, floor like PyTorch), then DoubleConv."""

    out_channels: int
    conv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return DoubleConv(self.out_channels, conv_bias=self.conv_bias, dtype=self.dtype, name="conv")(x, train)


class Up(nn.Module):
    """Double the resolution, pad to the skip, concat [skip, upsampled], DoubleConv.

    ``in_channels`` is the width of the concatenation. Bilinear: parameter-free
    upsampling and a DoubleConv narrowed to in/2 in the middle. Otherwise a 2x2
    stride-2 transposed conv halves the channels first. Note for converters:
    flax's ConvTranspose does not flip its kernel, PyTorch's effectively does.
    """

    in_channels: int
    out_channels: int
    bilinear: bool = True
    conv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, skip: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.bilinear:
            x = upsample_bilinear_align_corners(x, scale=2)
            mid_channels = self.in_channels // 2
        else:
            x = nn.ConvTranspose(self.in_channels // 2, (2, 2), strides=(2, 2), padding="VALID",
                                 dtype=self.dtype, param_dtype=jnp.float32, name="up")(x)
            mid_channels = None
        x = jnp.concatenate([skip, pad_to_match(x, skip)], axis=-1)
        return DoubleConv(self.out_channels, mid_channels, conv_bias=self.conv_bias, dtype=self.dtype,
                          name="conv")(x, train)


class UNet(nn.Module):
    """Classic U-Net on NHWC input of any channel count (3 for LL, 9 for LH/HL/HH stacked).

    ``features`` is the first level's width, doubled at each of the ``depth`` down
    steps (64 -> 1024 by default). With ``bilinear`` the deepest width is halved as
    in milesial, so the up path's widths mirror the down path's. ``conv_bias``
    False is milesial's layout; the official ppfer code leaves PyTorch's default
    bias on its 3x3 convs (True). Odd spatial sizes are handled by the pad step.
    """

    out_channels: int
    features: int = 64
    depth: int = 4
    bilinear: bool = True
    head: str = "linear"
    out_range: tuple[float, float] = (0.0, 1.0)
    conv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.depth < 1:
            raise ValueError(f"UNet.depth: expected at least 1, got {self.depth}")
        factor = 2 if self.bilinear else 1
        widths = [self.features * 2**level for level in range(self.depth + 1)]
        common = dict(conv_bias=self.conv_bias, dtype=self.dtype)
        inputs = x

        skips = [DoubleConv(widths[0], name="inc", **common)(x, train)]
        for level in range(1, self.depth + 1):
            width = widths[level] // factor if level == self.depth else widths[level]
            skips.append(Down(width, name=f"down{level}", **common)(skips[-1], train))

        x = skips.pop()
        for step in range(1, self.depth + 1):
            level = self.depth - step
            width = widths[level] if level == 0 else widths[level] // factor
            x = Up(widths[level + 1], width, self.bilinear, name=f"up{step}", **common)(x, skips.pop(), train)

        if self.head == "residual":
            if inputs.shape[-1] != self.out_channels:
                raise ValueError(f"UNet.head 'residual' adds to the input: expected {self.out_channels} input "
                                 f"channels, got {inputs.shape[-1]}")
            outc = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="outc",
                           kernel_init=nn.initializers.zeros, conv_general_dilated=conv)
            low, high = self.out_range
            return inputs.astype(jnp.float32) + 0.5 * (high - low) * jnp.tanh(outc(x).astype(jnp.float32))
        logits = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="outc",
                         conv_general_dilated=conv)(x)
        return apply_head(logits.astype(jnp.float32), self.head, self.out_range)
