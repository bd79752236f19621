"""Code autoencoder: ``ppfer_robust``'s band enhancers, an encoder to a small code z and a decoder from z alone.

A U-Net's skip connections hand every pixel of its input to its output, so whatever identity its training does
not erase passes through, and an attacker trained afresh reads it back (benchmarks/RESULTS.md: band U-Nets stayed
at 100 % even when trained directly to the oracle face swap). Here the output is a function of z only: what z does
not hold, the output cannot hold. With z kept free of identity (``stages/robust_privacy.py``) and the decoder
fitted to the input by L1 from z alone, the best the decoder can do is a face common to everyone -- the mean face
with z's expression and pose, a learnt k-Same (Newton, Sweeney and Malin, TKDE 2005).

Encoder: ``depth`` blocks of a stride-2 3x3 conv and a 3x3 conv (ReLU), ``features`` doubling per block, then a
dense layer and the linear code. Decoder: the mirror, with nearest-neighbour up-sampling, and ``head`` into
``out_range`` as the U-Net's heads (``unet.apply_head``). Our design; the paper's enhancers are U-Nets.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppfer_jax.models.layers import conv
from ppfer_jax.models.unet import apply_head


class CodeAutoencoder(nn.Module):
    """Band (N, size, size, C_in) -> code (N, code_dim) -> band (N, size, size, out_channels)."""

    out_channels: int
    size: int
    features: int = 16
    depth: int = 2
    code_dim: int = 8
    hidden: int = 128
    head: str = "sigmoid"
    out_range: tuple[float, float] = (0.0, 1.0)
    dtype: Any = jnp.float32

    def setup(self):
        if self.size % 2**self.depth:
            raise ValueError(f"CodeAutoencoder: size {self.size} is not divisible by 2**depth = {2**self.depth}")
        widths = [self.features * 2**level for level in range(self.depth)]
        layer = dict(dtype=self.dtype, param_dtype=jnp.float32, conv_general_dilated=conv)
        self.down = [(nn.Conv(w, (3, 3), strides=2, **layer), nn.Conv(w, (3, 3), **layer)) for w in widths]
        self.to_hidden = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32)
        self.to_code = nn.Dense(self.code_dim, param_dtype=jnp.float32)
        self.bottom = self.size // 2**self.depth
        self.from_code = nn.Dense(self.bottom**2 * widths[-1], dtype=self.dtype, param_dtype=jnp.float32)
        self.up = [(nn.Conv(w, (3, 3), **layer), nn.Conv(w, (3, 3), **layer)) for w in reversed(widths)]
        self.out = nn.Conv(self.out_channels, (3, 3), **layer)

    def encode(self, x: jax.Array) -> jax.Array:
        """The code z (N, code_dim), float32."""
        x = x.astype(self.dtype)
        for strided, plain in self.down:
            x = nn.relu(plain(nn.relu(strided(x))))
        return self.to_code(nn.relu(self.to_hidden(x.reshape(len(x), -1)))).astype(jnp.float32)

    def decode(self, z: jax.Array) -> jax.Array:
        """The band decoded from z alone."""
        x = nn.relu(self.from_code(z.astype(self.dtype)))
        x = x.reshape((len(z), self.bottom, self.bottom, -1))
        for first, second in self.up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = nn.relu(second(nn.relu(first(x))))
        return apply_head(self.out(x).astype(jnp.float32), self.head, self.out_range)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no batch statistics, no dropout
        return self.decode(self.encode(x))


class MLP(nn.Module):
    """Dense ReLU layers then a linear classifier: ``ppfer_robust``'s adversaries on the code."""

    num_classes: int
    hidden: tuple[int, ...] = (128, 128)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(x))
        return nn.Dense(self.num_classes, param_dtype=jnp.float32)(x).astype(jnp.float32)
