"""The baselines' transforms against analytic cases, and the sigma search's bracketing."""

import json

import jax
import numpy as np
import pytest
from scipy import ndimage

from ppfer_jax.baselines import blur, optical_flow
from ppfer_jax.search import bisect


# -- Gaussian blur (dm-pix)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0])
def test_a_delta_blurs_to_the_normalised_gaussian_kernel(sigma):
    size, centre = 41, 20
    image = np.zeros((size, size, 1), np.float32)
    image[centre, centre] = 1.0
    out = np.asarray(jax.jit(blur.gaussian_blur, static_argnums=1)(image, sigma))[..., 0]
    radius = blur.kernel_radius(sigma)
    offsets = np.arange(-radius, radius + 1)
    g = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()  # exp(-(x^2 + y^2) / 2 sigma^2), normalised
    expected = np.zeros((size, size))
    expected[centre - radius:centre + radius + 1, centre - radius:centre + radius + 1] = kernel
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_blur_matches_scipy_with_replicated_edges_and_keeps_leading_axes():
    rng = np.random.default_rng(0)
    clips = rng.random((2, 3, 24, 20, 3), dtype=np.float32)  # (B, T, H, W, C)
    out = np.asarray(blur.gaussian_blur(clips, 1.7))
    assert out.shape == clips.shape and out.dtype == np.float32
    for b in range(2):
        for t in range(3):
            ref = ndimage.gaussian_filter(clips[b, t], sigma=(1.7, 1.7, 0), mode="nearest", truncate=3.0)
            np.testing.assert_allclose(out[b, t], ref, atol=1e-5)


def test_blur_keeps_a_constant_image_and_sigma_zero_is_the_identity():
    flat = np.full((16, 16, 3), 0.4, np.float32)
    np.testing.assert_allclose(blur.gaussian_blur(flat, 2.5), flat, atol=1e-6)  # borders too
    image = np.random.default_rng(1).random((16, 16, 3), dtype=np.float32)
    np.testing.assert_array_equal(blur.gaussian_blur(image, 0.0), image)
    with pytest.raises(ValueError, match="sigma"):
        blur.gaussian_blur(image, -1.0)
    with pytest.raises(ValueError, match="float"):
        blur.gaussian_blur((image * 255).astype(np.uint8), 1.0)


def test_blur_method_names_round_trip_their_sigma():
    assert blur.method_name(2.123456) == "blur/sigma_2.123"
    assert blur.sigma_of(blur.method_name(2.123456)) == 2.123
    assert blur.sigma_of(blur.method_name(0.0)) == 0.0


# -- optical flow (OpenCV Farneback)


def _texture(size=64, seed=0):
    noise = np.random.default_rng(seed).random((size, size))
    smooth = ndimage.gaussian_filter(noise, 2.0, mode="wrap")
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return smooth


@pytest.mark.parametrize("shift", [(2.0, 1.0), (0.0, 0.0), (-1.0, 1.5)])
def test_a_known_shift_gives_the_known_flow(shift):
    dx, dy = shift
    first = _texture()
    second = ndimage.shift(first, (dy, dx), order=3, mode="wrap")  # content moves by +dx, +dy
    video = np.stack([first, second])[..., None].repeat(3, -1)
    video = np.round(video * 255).astype(np.uint8)
    flow = optical_flow.flow_fields(video)
    assert flow.shape == (1, 64, 64, 2) and flow.dtype == np.float32
    interior = flow[0, 8:-8, 8:-8].reshape(-1, 2)
    np.testing.assert_allclose(np.median(interior, axis=0), [dx, dy], atol=0.25)


def test_flow_renders_on_the_colour_wheel():
    m = 2.0
    flow = np.array([[[m, 0.0], [0.0, m], [-m, 0.0], [0.0, -m], [0.0, 0.0], [m / 2, 0.0]]], np.float32)
    rgb = optical_flow.render_flow(flow, max_magnitude=m)[0]
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0], [255, 0, 0])      # +x (right): hue 0, red
    np.testing.assert_array_equal(rgb[1], [128, 255, 0])    # +y (down): hue 90 degrees, chartreuse
    np.testing.assert_array_equal(rgb[2], [0, 255, 255])    # -x: hue 180, cyan
    np.testing.assert_array_equal(rgb[3], [128, 0, 255])    # -y (up): hue 270 degrees, violet
    np.testing.assert_array_equal(rgb[4], [0, 0, 0])        # no motion: black
    np.testing.assert_array_equal(rgb[5], [128, 0, 0])      # half the full-scale magnitude: half bright


def test_flow_video_keeps_the_frame_count_and_rejects_bad_input():
    video = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = optical_flow.flow_video(video, 2.0)
    assert out.shape == video.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[-1], out[-2])
    assert optical_flow.flow_clips(video[None], 2.0).shape == (1,) + video.shape
    with pytest.raises(ValueError, match="uint8"):
        optical_flow.flow_fields(video.astype(np.float32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        optical_flow.flow_fields(video[:1])
    with pytest.raises(ValueError, match="max_magnitude"):
        optical_flow.render_flow(np.zeros((4, 4, 2)), 0.0)


# -- the sigma search


@pytest.mark.parametrize("f, lo, hi, target", [(lambda x: x ** 2, 0.0, 4.0, 5.0),        # increasing
                                               (lambda x: 1.0 / (1.0 + x), 0.0, 9.0, 0.3)])  # decreasing
def test_bisection_keeps_the_target_bracketed_and_converges(f, lo, hi, target):
    brackets = []
    result = bisect(f, lo, hi, target, max_evaluations=40, tolerance=1e-6)
    assert result.bracketed and result.converged and abs(result.value - target) <= 1e-6
    # Replaying the history, every bracket the search kept encloses the target.
    (a, fa), (b, fb) = result.history[:2]
    for x, fx in result.history[2:]:
        brackets.append(((a, fa), (b, fb)))
        assert min(fa, fb) <= target <= max(fa, fb)
        if min(fa, fx) <= target <= max(fa, fx):
            b, fb = x, fx
        else:
            a, fa = x, fx
    (x0, f0), (x1, f1) = result.bracket
    assert min(f0, f1) <= target <= max(f0, f1)
    assert bisect(f, lo, hi, target, max_evaluations=40, tolerance=1e-6).history == result.history  # determinism
    json.dumps(result.to_dict())


def test_an_unreachable_target_returns_the_nearest_end():
    result = bisect(lambda x: x, 0.0, 1.0, 3.0, max_evaluations=10, tolerance=0.01)
    assert not result.bracketed and not result.converged and result.x == 1.0 and len(result.history) == 2


def test_a_step_function_still_brackets_its_target_within_the_budget():
    calls = []

    def plr(sigma):  # like a leakage ratio over 72 clips: multiples of 1/72, falling with sigma
        calls.append(sigma)
        return np.floor(72 * np.exp(-sigma)) / 72

    target = 0.5 + 1 / 144  # halfway between two attainable values: no point can be within tolerance
    result = bisect(plr, 0.0, 6.0, target, max_evaluations=8, tolerance=1e-4)
    assert len(calls) == 8 and not result.converged
    (x0, f0), (x1, f1) = result.bracket
    assert min(f0, f1) <= target <= max(f0, f1) and abs(x1 - x0) == pytest.approx(6.0 / 2 ** 6)
    assert abs(result.value - target) == pytest.approx(1 / 144)


@pytest.mark.parametrize("kwargs", [dict(lo=1.0, hi=1.0), dict(lo=0.0, hi=1.0, max_evaluations=1)])
def test_bisection_rejects_bad_arguments(kwargs):
    args = dict(lo=0.0, hi=1.0, max_evaluations=5) | kwargs
    with pytest.raises(ValueError):
        bisect(lambda x: x, args["lo"], args["hi"], 0.5, max_evaluations=args["max_evaluations"], tolerance=0.0)
