"""Clip augmentation: flips mirror whole clips, shifts move all frames alike, both depend only on the key."""

import jax
import jax.numpy as jnp
import numpy as np

from ppfer_jax.augment import flip_and_shift

CLIPS = jax.random.uniform(jax.random.key(0), (16, 3, 10, 10, 2))


def test_flip_mirrors_some_clips_and_leaves_the_others():
    out = np.asarray(flip_and_shift(jax.random.key(1), CLIPS, flip=True))
    flipped = [np.array_equal(out[i], np.asarray(CLIPS[i, :, :, ::-1])) for i in range(16)]
    kept = [np.array_equal(out[i], np.asarray(CLIPS[i])) for i in range(16)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each clip is exactly one of the two
    assert 0 < sum(flipped) < 16


def test_shift_moves_every_frame_of_a_clip_by_the_same_offset():
    m = 2
    out = np.asarray(flip_and_shift(jax.random.key(3), CLIPS, flip=False, max_shift=m))
    padded = np.pad(np.asarray(CLIPS), ((0, 0), (0, 0), (m, m), (m, m), (0, 0)), mode="edge")
    offsets = []
    for i in range(16):
        hits = [(dy, dx) for dy in range(2 * m + 1) for dx in range(2 * m + 1)
                if np.array_equal(out[i], padded[i, :, dy:dy + 10, dx:dx + 10])]
        assert len(hits) == 1, f"clip {i} is not one shifted copy of itself"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1


def test_same_key_same_clips_and_nothing_requested_is_the_identity():
    a = flip_and_shift(jax.random.key(4), CLIPS, max_shift=1)
    b = flip_and_shift(jax.random.key(4), CLIPS, max_shift=1)
    np.testing.assert_array_equal(a, b)
    assert jnp.array_equal(flip_and_shift(jax.random.key(4), CLIPS, flip=False, max_shift=0), CLIPS)
