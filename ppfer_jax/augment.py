"""Label-preserving clip augmentation inside the jitted step: horizontal flip and a small translation.

The synthetic set (like CREMA-D) has a few hundred training clips; without
augmentation the utility model memorises them (train accuracy 100%, test far
lower). Flips keep every expression's label (the actions are left-right
symmetric); the shift is the same for every frame of a clip, so motion is kept.
"""

import jax
import jax.numpy as jnp


def flip_and_shift(rng: jax.Array, clips: jax.Array, *, flip: bool = True, max_shift: int = 0) -> jax.Array:
    """Per clip of (B, T, H, W, C): a random horizontal flip and a random (dy, dx) in [-max_shift, max_shift]
    with edge padding. Deterministic in ``rng``."""
    flip_rng, shift_rng = jax.random.split(rng)
    batch = clips.shape[0]
    if flip:
        flipped = jax.random.bernoulli(flip_rng, 0.5, (batch,)).reshape((batch,) + (1,) * (clips.ndim - 1))
        clips = jnp.where(flipped, clips[..., ::-1, :], clips)
    if max_shift:
        m = max_shift
        padded = jnp.pad(clips, ((0, 0), (0, 0), (m, m), (m, m), (0, 0)), mode="edge")
        offsets = jax.random.randint(shift_rng, (batch, 2), 0, 2 * m + 1)
        size = clips.shape[1:]

        def crop(clip, offset):
            return jax.lax.dynamic_slice(clip, (0, offset[0], offset[1], 0), size)
        clips = jax.vmap(crop)(padded, offsets)
    return clips
