"""PPRL-VGAN's networks (Chen, Konrad and Ishwar, CVPRW 2018), at the sizes of its public Keras code.

The generator is a variational encoder-decoder: the encoder reads a frame (in [-1, 1]) and never its person; the
decoder draws a face from the code z and a one-hot *target* identity c, so the person in its output is c's, not
the input's. The discriminator has three heads on one trunk: real/fake, identity and expression.

Sizes (``features`` = 32 gives the published ones): encoder 4 stride-2 5x5 convs of 1, 2, 4, 8 x ``features``
channels with BatchNorm, dropout 0.3 and LeakyReLU 0.2, then mu and log-variance (``z_dim``); decoder a dense layer
to ``start`` x ``start`` x 4 ``features`` (4 x 4 x 128 at their 64 px), stride-2 5x5 transposed convs of 8, 4, 4 x
``features`` channels (ReLU, BatchNorm) and a last stride-2 transposed conv to RGB with tanh; discriminator 4
stride-2 5x5 convs (1-8 x ``features``, LeakyReLU 0.2), a dense layer of ``hidden`` units, dropout 0.5, three heads.
The number of up-samplings follows the frame size: halve it while it stays even and above 4 (32 px: 4 -> 32 in
three; 112 px: 7 -> 112 in four). Where a 5th up-sampling is needed, its width repeats the last.

The transposed convolutions run in their sub-pixel form (``UpConv``): XLA:CPU's dilated-input convolution made the
decoder ten times slower than the encoder (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ppfer_jax.models.layers import conv


# Which tap of a 5-tap stride-2 transposed kernel each output phase (row) reads at input offset -1, 0, +1 (column);
# 5 is a zero tap: y[2i + a] = sum_d x[i + d] w[PHASE_TAPS[a][d + 1]].
PHASE_TAPS = np.array([[4, 2, 0], [5, 3, 1]])


class UpConv(nn.Module):
    """A stride-2 5x5 transposed convolution, y[2m + k - 2] += x[m] w[k] per axis (output twice the input's side),
    computed as one 3x3 convolution to the four output phases and a depth-to-space: the same function and
    parameters (a (5, 5, C_in, C_out) kernel and a bias), without XLA:CPU's slow dilated-input convolution."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (5, 5, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap 5: zero
        rows = padded[PHASE_TAPS]  # (2 phases, 3 offsets, 6, C_in, C_out)
        phases = rows[:, :, PHASE_TAPS]  # (a, dy, b, dx, C_in, C_out)
        phases = phases.transpose(1, 3, 4, 0, 2, 5).reshape(3, 3, x.shape[-1], 4 * self.features)
        y = conv(x.astype(self.dtype), phases.astype(self.dtype), (1, 1), ((1, 1), (1, 1)),
                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
        n, h, w, _ = y.shape
        y = y.reshape(n, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, -1)
        return y + bias.astype(self.dtype)


def decoder_start(size: int) -> tuple[int, int]:
    """(start side, number of stride-2 up-samplings) of the decoder for square frames of side ``size``."""
    start, ups = size, 0
    while start % 2 == 0 and start > 4:
        start, ups = start // 2, ups + 1
    if ups == 0:
        raise ValueError(f"PPRL-VGAN: frame side {size} cannot be reached by stride-2 up-sampling")
    return start, ups


class VGANGenerator(nn.Module):
    """Encoder frame -> (mu, log-variance); decoder (z, one-hot c) -> frame in [-1, 1]."""

    num_classes: int  # the identities c ranges over
    size: int
    features: int = 32
    z_dim: int = 128
    dtype: Any = jnp.float32

    def setup(self):
        layer = dict(dtype=self.dtype, param_dtype=jnp.float32)
        self.down = [nn.Conv(self.features * m, (5, 5), strides=2, conv_general_dilated=conv, **layer)
                     for m in (1, 2, 4, 8)]
        self.down_norms = [nn.BatchNorm(**layer) for _ in self.down]
        self.dropout = nn.Dropout(0.3)
        self.to_mean = nn.Dense(self.z_dim, param_dtype=jnp.float32)
        self.to_log_var = nn.Dense(self.z_dim, param_dtype=jnp.float32)
        self.start, ups = decoder_start(self.size)
        self.from_code = nn.Dense(self.start**2 * 4 * self.features, **layer)
        self.from_code_norm = nn.BatchNorm(**layer)
        widths = [self.features * m for m in (8, 4, 4)][:ups - 1]
        widths += [widths[-1] if widths else 4 * self.features] * (ups - 1 - len(widths))
        self.up = [UpConv(w, dtype=self.dtype) for w in widths]
        self.up_norms = [nn.BatchNorm(**layer) for _ in widths]
        self.to_rgb = UpConv(3, dtype=self.dtype)

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """(mu, log-variance), float32, of frames (N, size, size, 3) in [-1, 1]."""
        x = x.astype(self.dtype)
        for down, norm in zip(self.down, self.down_norms):
            x = nn.leaky_relu(self.dropout(norm(down(x), use_running_average=not train), deterministic=not train),
                              0.2)
        x = x.reshape(len(x), -1)
        return self.to_mean(x).astype(jnp.float32), self.to_log_var(x).astype(jnp.float32)

    def decode(self, z: jax.Array, target: jax.Array, train: bool = False) -> jax.Array:
        """Frames (N, size, size, 3) in [-1, 1] from codes z (N, z_dim) and one-hot target identities (N, classes)."""
        x = jnp.concatenate([z, target.astype(z.dtype)], axis=-1).astype(self.dtype)
        x = nn.relu(self.from_code_norm(self.from_code(x), use_running_average=not train))
        x = x.reshape((len(z), self.start, self.start, -1))
        for up, norm in zip(self.up, self.up_norms):
            x = nn.relu(norm(up(x), use_running_average=not train))
        return jnp.tanh(self.to_rgb(x).astype(jnp.float32))

    def reconstruct(self, x: jax.Array, target: jax.Array, noise: jax.Array, train: bool = False):
        """(frames decoded from z = mu + exp(log-variance / 2) * noise and ``target``, mu, log-variance)."""
        mean, log_var = self.encode(x, train)
        return self.decode(mean + jnp.exp(0.5 * log_var) * noise, target, train), mean, log_var

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The frames re-drawn from their mean code as the first identity (builds every parameter)."""
        target = jax.nn.one_hot(jnp.zeros(len(x), jnp.int32), self.num_classes)
        return self.reconstruct(x, target, jnp.zeros((len(x), self.z_dim)), train)[0]


class VGANDiscriminator(nn.Module):
    """Frames in [-1, 1] -> (real/fake logit (N,), identity logits (N, identities), expression logits (N, E))."""

    num_classes: int
    num_expressions: int
    features: int = 32
    hidden: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        layer = dict(dtype=self.dtype, param_dtype=jnp.float32)
        x = x.astype(self.dtype)
        for m in (1, 2, 4, 8):
            x = nn.leaky_relu(nn.Conv(self.features * m, (5, 5), strides=2, conv_general_dilated=conv, **layer)(x),
                              0.2)
        x = nn.leaky_relu(nn.Dense(self.hidden, **layer)(x.reshape(len(x), -1)), 0.2)
        x = nn.Dropout(0.5)(x, deterministic=not train)
        heads = [nn.Dense(n, param_dtype=jnp.float32)(x).astype(jnp.float32)
                 for n in (1, self.num_classes, self.num_expressions)]
        return heads[0][:, 0], heads[1], heads[2]
