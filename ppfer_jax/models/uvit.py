"""U-ViT (Bao et al., "All are worth words", CVPR 2023): the feature compensator F_fc.

A ViT whose tokens are the image patches plus a time token (and a label token
for class-conditional models), with long skips from the first half of the
blocks to the second half. The paper uses it image to image: one forward pass
at a fixed timestep, no sampling loop, so ``timestep`` is a module field.

Layout and names follow baofff/U-ViT ``libs/uvit.py`` so its checkpoints (e.g.
"ImageNet 256x256 (U-ViT-H/2)", which the paper starts from) map over by name:
token order [label, time, patches]; qkv features ordered (3, heads, head_dim);
exact-erf GELU and LayerNorm eps 1e-5 as in PyTorch; decoder output per patch
ordered (p1, p2, C), which is exactly NHWC's order inside a patch.
"""

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from ppfer_jax.models.layers import conv

# name -> (embed_dim, depth, num_heads). ``depth`` counts the in- and out-blocks
# (as U-ViT's configs do); the model adds one mid block. 'tiny' is for tests.
UVIT_SIZES = {
    "tiny": (32, 2, 2),
    "S": (512, 12, 8),
    "M": (768, 16, 12),
    "L": (1024, 20, 16),
    "H": (1152, 28, 16),
}

dense_init = nn.initializers.truncated_normal(stddev=0.02)  # U-ViT's _init_weights for Linear layers


def uvit_size(name: str) -> dict[str, int]:
    """Keyword arguments (embed_dim, depth, num_heads) of a named U-ViT size."""
    if name not in UVIT_SIZES:
        raise ValueError(f"uvit_size: expected one of {sorted(UVIT_SIZES)}, got {name!r}")
    embed_dim, depth, num_heads = UVIT_SIZES[name]
    return dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)


def timestep_embedding(timesteps: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps, shape (B, dim), float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
    embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


def unpatchify(tokens: jnp.ndarray, grid_h: int, grid_w: int, patch_size: int) -> jnp.ndarray:
    """(B, h*w, p*p*C) patch predictions -> (B, h*p, w*p, C) image."""
    return einops.rearrange(tokens, "b (h w) (p1 p2 c) -> b (h p1) (w p2) c",
                            h=grid_h, w=grid_w, p1=patch_size, p2=patch_size)


class Attention(nn.Module):
    """Multi-head self-attention; softmax runs in float32 (U-ViT casts q, k, v up too)."""

    dim: int
    num_heads: int
    qkv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        qkv = nn.Dense(3 * self.dim, use_bias=self.qkv_bias, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=dense_init, name="qkv")(x)
        q, k, v = einops.rearrange(qkv, "b l (k h d) -> k b l h d", k=3, h=self.num_heads)
        x = jax.nn.dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
        x = einops.rearrange(x, "b l h d -> b l (h d)").astype(self.dtype)
        return nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init, name="proj")(x)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear, as timm's Mlp with nn.GELU."""

    dim: int
    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init,
                     name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init, name="fc2")(x)


class Block(nn.Module):
    """Pre-LN transformer block; with ``skip`` it first fuses a long skip: Linear(concat[x, skip])."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    skip: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, skip: jnp.ndarray | None = None) -> jnp.ndarray:
        if self.skip:
            x = nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init,
                         name="skip_linear")(jnp.concatenate([x, skip], axis=-1))
        norm = dict(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32)
        x = x + Attention(self.dim, self.num_heads, self.qkv_bias, dtype=self.dtype, name="attn")(
            nn.LayerNorm(name="norm1", **norm)(x))
        return x + Mlp(self.dim, int(self.dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
            nn.LayerNorm(name="norm2", **norm)(x))


class UViT(nn.Module):
    """U-ViT on NHWC images of size ``img_size`` (square), returning an NHWC float32 image.

    ``out_channels`` defaults to ``in_channels`` (U-ViT predicts noise of the
    input's shape). With ``num_classes > 0`` a label token is added; when no
    labels are given the last class is used, which U-ViT's class-conditional
    configs (num_classes = 1001 on ImageNet) reserve as the null label of
    classifier-free guidance. ``timestep`` is used when no timesteps are given;
    1 is the least noisy step of the discrete schedule of the ImageNet latent models.
    """

    img_size: int
    patch_size: int
    in_channels: int = 3
    out_channels: int | None = None
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False
    num_classes: int = -1
    use_conv: bool = True
    timestep: float = 1.0
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass (jax.checkpoint): less memory

    @nn.compact
    def __call__(self, x: jnp.ndarray, timesteps: jnp.ndarray | float | None = None,
                 labels: jnp.ndarray | None = None, train: bool = False) -> jnp.ndarray:
        """``train`` is accepted for a uniform model interface; U-ViT has no dropout or BatchNorm."""
        batch, height, width, channels = x.shape
        if (height, width, channels) != (self.img_size, self.img_size, self.in_channels):
            raise ValueError(f"UViT input: expected (B, {self.img_size}, {self.img_size}, {self.in_channels}) "
                             f"from img_size/in_channels, got {x.shape}")
        if self.img_size % self.patch_size:
            raise ValueError(f"UViT.img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        out_channels = self.out_channels or self.in_channels
        grid = self.img_size // self.patch_size
        dim = self.embed_dim
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init)

        patches = nn.Conv(dim, (self.patch_size, self.patch_size), strides=self.patch_size, padding="VALID",
                          dtype=self.dtype, param_dtype=jnp.float32, conv_general_dilated=conv,
                          name="patch_embed")(x)
        tokens = [patches.reshape(batch, grid * grid, dim)]

        if timesteps is None:
            timesteps = self.timestep
        time_token = timestep_embedding(jnp.broadcast_to(jnp.asarray(timesteps), (batch,)), dim)
        if self.mlp_time_embed:
            time_token = nn.Dense(4 * dim, name="time_embed_0", **dense)(time_token)
            time_token = nn.Dense(dim, name="time_embed_2", **dense)(nn.silu(time_token))
        tokens.insert(0, time_token[:, None].astype(self.dtype))

        if self.num_classes > 0:
            if labels is None:
                labels = jnp.full((batch,), self.num_classes - 1, dtype=jnp.int32)
            label_token = nn.Embed(self.num_classes, dim, dtype=self.dtype, param_dtype=jnp.float32,
                                   name="label_emb")(labels)
            tokens.insert(0, label_token[:, None])
        extras = len(tokens) - 1

        pos_embed = self.param("pos_embed", dense_init, (1, extras + grid * grid, dim), jnp.float32)
        x = jnp.concatenate(tokens, axis=1) + pos_embed.astype(self.dtype)

        block = dict(dim=dim, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                     dtype=self.dtype)
        block_cls = nn.remat(Block) if self.remat else Block
        skips = []
        for index in range(self.depth // 2):
            x = block_cls(name=f"in_blocks_{index}", **block)(x)
            skips.append(x)
        x = block_cls(name="mid_block", **block)(x)
        for index in range(self.depth // 2):
            x = block_cls(skip=True, name=f"out_blocks_{index}", **block)(x, skips.pop())

        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32, name="norm")(x)
        x = nn.Dense(self.patch_size**2 * out_channels, name="decoder_pred", **dense)(x)
        x = unpatchify(x[:, extras:], grid, grid, self.patch_size)
        if self.use_conv:
            x = nn.Conv(out_channels, (3, 3), padding=1, dtype=self.dtype, param_dtype=jnp.float32,
                        conv_general_dilated=conv, name="final_layer")(x)
        return x.astype(jnp.float32)
