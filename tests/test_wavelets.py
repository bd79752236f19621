"""Wavelet split/merge against pywt (the independent reference), under jit and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pywt

from ppfer_jax import wavelets


def _frames(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_spatial_split_matches_pywt_dwt2(wavelet):
    x = _frames((2, 3, 16, 12, 3))  # (B, T, H, W, C), non-square on purpose
    low, high = jax.jit(lambda f: wavelets.split(f, wavelet))(x)
    ref_low, (ref_h, ref_v, ref_d) = pywt.dwt2(x, wavelet, mode="symmetric", axes=(-3, -2))
    np.testing.assert_allclose(low, ref_low, atol=1e-5)
    np.testing.assert_allclose(high, np.concatenate([ref_h, ref_v, ref_d], -1), atol=1e-5)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_spatiotemporal_split_matches_pywt_wavedecn(wavelet):
    x = _frames((2, 8, 16, 16, 3))
    low, high = jax.jit(lambda f: wavelets.split(f, wavelet, spatiotemporal=True))(x)
    ref = pywt.wavedecn(x, wavelet, mode="symmetric", level=1, axes=(1, 2, 3))
    np.testing.assert_allclose(low, ref[0], atol=1e-5)
    ref_high = np.concatenate([ref[1][k] for k in wavelets.DETAIL_KEYS_3D], -1)
    np.testing.assert_allclose(high, ref_high, atol=1e-5)
    assert high.shape[-1] == 7 * 3


@pytest.mark.parametrize("spatiotemporal", [False, True])
@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_merge_inverts_split_under_jit(spatiotemporal, wavelet):
    x = _frames((2, 8, 16, 16, 3), seed=1)

    @jax.jit
    def round_trip(f):
        low, high = wavelets.split(f, wavelet, spatiotemporal=spatiotemporal)
        return wavelets.merge(low, high, wavelet, spatiotemporal=spatiotemporal)

    np.testing.assert_allclose(round_trip(x), x, atol=1e-5)


@pytest.mark.parametrize("spatiotemporal", [False, True])
def test_round_trip_gradient_is_identity(spatiotemporal):
    """d/dx sum(w * merge(split(x))) = w, because merge(split(.)) is the identity map."""
    x = jnp.asarray(_frames((1, 4, 8, 8, 3), seed=2))
    w = jnp.asarray(_frames((1, 4, 8, 8, 3), seed=3))

    def loss(f):
        low, high = wavelets.split(f, spatiotemporal=spatiotemporal)
        return jnp.sum(w * wavelets.merge(low, high, spatiotemporal=spatiotemporal))

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), w, atol=1e-5)


def test_band_gradients_flow_to_an_enhancer_like_map():
    """Scaling only the high band changes the frames, and grad sees exactly the detail energy."""
    x = jnp.asarray(_frames((2, 8, 8, 3), seed=4))
    low, high = wavelets.split(x)

    def energy(scale):
        return jnp.sum(wavelets.merge(low, scale * high) ** 2)

    # Orthonormal Haar: ||merge(l, s h)||^2 = ||l||^2 + s^2 ||h||^2, so d/ds at s=1 is 2 ||h||^2.
    np.testing.assert_allclose(jax.grad(energy)(1.0), 2 * jnp.sum(high**2), rtol=1e-5)


def test_haar_band_ranges_on_unit_images():
    """LL of [0,1] frames lies in [0,2] and detail bands in [-1,1] (why enhancer heads need that range)."""
    white = np.ones((1, 8, 8, 3), np.float32)
    checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[None, :, :, None].repeat(3, -1)
    low, _ = wavelets.split(white)
    _, high = wavelets.split(checker)
    np.testing.assert_allclose(low, 2.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(high[..., 6:]), 1.0, atol=1e-6)  # HH of a checkerboard is +-1


def test_integer_frames_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        wavelets.split(np.zeros((1, 8, 8, 3), np.uint8))


def test_merge_rejects_wrong_high_band_channels():
    low = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="9 channels"):
        wavelets.merge(low, jnp.zeros((1, 4, 4, 6)))
