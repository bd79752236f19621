"""ResNet-18/34/50 with torchvision's exact layout, in flax.linen (channels-last).

Used for the identity controllers C_lpr / C_hpr, the privacy-leakage validator
V_pl and the expression controller C_fc. Input channels are whatever `x` has
(3 for frames, 9 for the three stacked detail bands of a wavelet split).

The layout is torchvision's "v1.5": in a Bottleneck the stride sits on the 3x3
conv; a block gets a projection shortcut (conv1x1 with the block's stride, then
BatchNorm) exactly when it changes shape. Every conv is padded by k // 2 on
both sides, as in torch, so converted torch weights see the same sampling grid.

The blocks and `residual_stages` work for any number of spatial axes, so the
video R3D-18 in `r3d.py` reuses them with 3-D kernels.

Submodule names, and the torchvision names they map onto (`i` = 1..4, `j` = 0..):

    stem_conv                       conv1
    stem_bn                         bn1
    stage{i}_block{j}               layer{i}.{j}
      conv1 / bn1, conv2 / bn2,     .conv1 / .bn1, .conv2 / .bn2,
      conv3 / bn3 (Bottleneck)      .conv3 / .bn3
      downsample_conv               .downsample.0
      downsample_bn                 .downsample.1
    head                            fc

Conv kernels are (kh, kw, in, out) here and (out, in, kh, kw) in torch; Dense
kernels are (in, out) here and (out, in) in torch; BatchNorm scale / bias /
mean / var are torch's weight / bias / running_mean / running_var.
"""

from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppfer_jax.models.layers import conv

Dtype = Any
Initializer = Callable[..., jax.Array]

# torchvision initialises every conv with kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_padded_conv(features: int, kernel_size: Sequence[int], strides: Sequence[int],
                      dtype: Dtype, name: str) -> nn.Conv:
    """Bias-free conv padded k // 2 per side, as torchvision does.

    Flax's 'SAME' pads asymmetrically under stride 2 (e.g. (2, 3) for a 7x7
    kernel), which shifts the sampling grid and would break converted weights.
    Runs `layers.conv` (3-D kernels as one 2-D conv on CPU).
    """
    return nn.Conv(features, tuple(kernel_size), strides=tuple(strides),
                   padding=[(k // 2, k // 2) for k in kernel_size], use_bias=False,
                   dtype=dtype, param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                   conv_general_dilated=conv, name=name)


def batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (torch momentum 0.1 is flax momentum 0.9)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, param_dtype=jnp.float32, name=name)


def projection_shortcut(x: jax.Array, out_features: int, stride: int, train: bool,
                        dtype: Dtype) -> jax.Array:
    """Identity, or conv1x1(stride) + BN when the block changes shape (torch's `downsample`)."""
    if stride == 1 and x.shape[-1] == out_features:
        return x
    ndim = x.ndim - 2
    y = torch_padded_conv(out_features, (1,) * ndim, (stride,) * ndim, dtype, "downsample_conv")(x)
    return batch_norm(train, dtype, "downsample_bn")(y)


class BasicBlock(nn.Module):
    """Two 3x3 convs with the stride on the first; 2-D or 3-D by the rank of `x`."""

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ndim = x.ndim - 2
        y = torch_padded_conv(self.features, (3,) * ndim, (self.stride,) * ndim, self.dtype, "conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
        y = torch_padded_conv(self.features, (3,) * ndim, (1,) * ndim, self.dtype, "conv2")(y)
        y = batch_norm(train, self.dtype, "bn2")(y)
        return nn.relu(y + projection_shortcut(x, self.features, self.stride, train, self.dtype))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, torchvision v1.5), 1x1 expand by 4."""

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ndim = x.ndim - 2
        out_features = self.features * self.expansion
        y = torch_padded_conv(self.features, (1,) * ndim, (1,) * ndim, self.dtype, "conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
        y = torch_padded_conv(self.features, (3,) * ndim, (self.stride,) * ndim, self.dtype, "conv2")(y)
        y = nn.relu(batch_norm(train, self.dtype, "bn2")(y))
        y = torch_padded_conv(out_features, (1,) * ndim, (1,) * ndim, self.dtype, "conv3")(y)
        y = batch_norm(train, self.dtype, "bn3")(y)
        return nn.relu(y + projection_shortcut(x, out_features, self.stride, train, self.dtype))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def residual_stages(x: jax.Array, stage_sizes: Sequence[int], block_cls: type, width: int,
                    train: bool, dtype: Dtype) -> jax.Array:
    """Stage i has width * 2**i channels; every stage after the first halves all spatial axes."""
    for i, num_blocks in enumerate(stage_sizes):
        for j in range(num_blocks):
            stride = 2 if i > 0 and j == 0 else 1
            x = block_cls(width * 2**i, stride, dtype, name=f"stage{i + 1}_block{j}")(x, train)
    return x


def torch_linear_bias_init(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default nn.Linear bias init."""
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def pooled_head(x: jax.Array, num_classes: int, dtype: Dtype, kernel_init: Initializer,
                bias_init: Initializer) -> jax.Array:
    """Global average pool over every spatial axis, then a biased Dense; logits in float32.

    The pool runs in float32 because a bf16 mean over thousands of positions loses digits.
    """
    pooled = jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim - 1)))
    logits = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                      bias_init=bias_init, name="head")(pooled)
    return logits.astype(jnp.float32)


class ResNet(nn.Module):
    """torchvision ResNet on NHWC images; returns float32 logits.

    `small_input=True` swaps the stem for a conv3x3/1 without max-pool (the
    CIFAR convention): on 32-64 px faces the standard 7x7/2 stem + max-pool
    divides resolution by 4 before stage 1, leaving 1-2 px maps in stage 4.
    """

    stage_sizes: Sequence[int]
    block: str
    num_classes: int
    width: int = 64
    dtype: Dtype = jnp.float32
    small_input: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet.block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        x = x.astype(self.dtype)
        kernel, stride = ((3, 3), (1, 1)) if self.small_input else ((7, 7), (2, 2))
        x = torch_padded_conv(self.width, kernel, stride, self.dtype, "stem_conv")(x)
        x = nn.relu(batch_norm(train, self.dtype, "stem_bn")(x))
        if not self.small_input:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = residual_stages(x, self.stage_sizes, BLOCKS[self.block], self.width, train, self.dtype)
        # the pooled features, for a face-embedding use (``verification.embed``: apply with mutable intermediates)
        self.sow("intermediates", "embedding", jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
        # torchvision leaves fc at torch's nn.Linear default: kernel and bias U(+-1/sqrt(fan_in)).
        return pooled_head(x, self.num_classes, self.dtype,
                           kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                           bias_init=torch_linear_bias_init(fan_in=x.shape[-1]))


def resnet18(num_classes: int, **kwargs: Any) -> ResNet:
    return ResNet(stage_sizes=(2, 2, 2, 2), block="basic", num_classes=num_classes, **kwargs)


def resnet34(num_classes: int, **kwargs: Any) -> ResNet:
    return ResNet(stage_sizes=(3, 4, 6, 3), block="basic", num_classes=num_classes, **kwargs)


def resnet50(num_classes: int, **kwargs: Any) -> ResNet:
    return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", num_classes=num_classes, **kwargs)
