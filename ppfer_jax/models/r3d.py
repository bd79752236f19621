"""R3D-18 (torchvision `r3d_18`) for video FER, in flax.linen on (B, T, H, W, C) clips.

Layout, as in torchvision: stem Conv3d 3x7x7 stride (1, 2, 2) padding (1, 3, 3)
without bias -> BN -> ReLU and no max-pool; four stages of two BasicBlocks with
full 3x3x3 convs (width x 1, 2, 4, 8 channels); the first block of stages 2-4
strides 2 in T, H and W and takes a Conv3d 1x1x1 / 2 + BN projection shortcut;
global average pool over T, H, W; a biased Dense head. The blocks are the
rank-agnostic ones of `resnet.py`.

Submodule names, and the torchvision names they map onto (`i` = 1..4, `j` = 0, 1):

    stem_conv                       stem.0
    stem_bn                         stem.1
    stage{i}_block{j}               layer{i}.{j}
      conv1 / bn1                   .conv1.0 / .conv1.1
      conv2 / bn2                   .conv2.0 / .conv2.1
      downsample_conv               .downsample.0
      downsample_bn                 .downsample.1
    head                            fc

Conv kernels are (kt, kh, kw, in, out) here and (out, in, kt, kh, kw) in torch.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppfer_jax.models.resnet import BasicBlock, batch_norm, pooled_head, residual_stages, torch_padded_conv

Dtype = Any


class R3D18(nn.Module):
    """torchvision r3d_18 on NDHWC clips; returns float32 logits."""

    num_classes: int
    width: int = 64
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each residual block in the backward pass (jax.checkpoint): less memory

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 5:
            raise ValueError(f"R3D18 expects clips of shape (B, T, H, W, C), got shape {x.shape}")
        x = x.astype(self.dtype)
        x = torch_padded_conv(self.width, (3, 7, 7), (1, 2, 2), self.dtype, "stem_conv")(x)
        x = nn.relu(batch_norm(train, self.dtype, "stem_bn")(x))
        block = nn.remat(BasicBlock, static_argnums=(2,)) if self.remat else BasicBlock  # (self, x, train)
        x = residual_stages(x, (2, 2, 2, 2), block, self.width, train, self.dtype)
        # torchvision's video ResNet re-initialises fc as N(0, 0.01) with zero bias.
        return pooled_head(x, self.num_classes, self.dtype,
                           kernel_init=nn.initializers.normal(0.01),
                           bias_init=nn.initializers.zeros)


def r3d_18(num_classes: int, **kwargs: Any) -> R3D18:
    return R3D18(num_classes=num_classes, **kwargs)
