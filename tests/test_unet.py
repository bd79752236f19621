"""U-Net enhancer / attacker and its align-corners upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppfer_jax.models.layers import (align_corners_interpolation_matrix, resize_bilinear_align_corners,
                                     upsample_bilinear_align_corners)
from ppfer_jax.models.unet import UNet, apply_head

TINY = dict(features=4, depth=2)


@pytest.fixture(scope="module")
def tiny():
    """One tiny model's variables, shared. Initialising is the slow part on CPU (a
    compiled random draw per parameter shape): jit it, and use the cheaper rbg generator."""
    x = jax.random.uniform(jax.random.PRNGKey(4), (4, 16, 16, 3))
    return x, jax.jit(UNet(3, **TINY).init)(jax.random.key(0, impl="rbg"), x)


def count_params(model, shape):
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def np_interp_align_corners(signal, out_size):
    """Independent reference: linear interpolation at positions i * (n - 1) / (m - 1)."""
    n = len(signal)
    positions = np.arange(out_size) * ((n - 1) / (out_size - 1) if out_size > 1 else 0.0)
    return np.interp(positions, np.arange(n), signal)


@pytest.mark.parametrize("in_size,out_size", [(5, 10), (4, 8), (1, 4), (7, 3), (6, 13), (3, 3)])
def test_interpolation_matrix_is_linear_interpolation_with_aligned_corners(in_size, out_size):
    signal = np.random.default_rng(0).normal(size=in_size)
    matrix = align_corners_interpolation_matrix(in_size, out_size)
    np.testing.assert_allclose(matrix @ signal, np_interp_align_corners(signal, out_size), atol=1e-12)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)


def test_upsample_matches_per_axis_np_interp_and_copies_corners():
    x = np.random.default_rng(1).normal(size=(2, 5, 7, 3)).astype(np.float32)
    y = np.asarray(upsample_bilinear_align_corners(jnp.asarray(x), scale=2))
    assert y.shape == (2, 10, 14, 3)
    along_h = np.apply_along_axis(np_interp_align_corners, 1, x, 10)
    expected = np.apply_along_axis(np_interp_align_corners, 2, along_h, 14)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    for row, col in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_array_equal(y[:, row, col], x[:, row, col])


def test_resize_to_same_size_is_identity_and_differentiable():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 6, 2)), jnp.float32)
    np.testing.assert_array_equal(resize_bilinear_align_corners(x, 4, 6), x)
    # Each output of a convex interpolation is a weighted mean, so d(sum)/dx sums to the output count.
    grad = jax.grad(lambda v: resize_bilinear_align_corners(v, 9, 11).sum())(x)
    np.testing.assert_allclose(grad.sum(), 2 * 9 * 11, rtol=1e-5)


@pytest.mark.parametrize("channels,height,width,bilinear", [
    (3, 16, 16, True), (9, 37, 29, True), (9, 19, 22, False),
])
def test_output_keeps_spatial_size_for_even_and_odd_inputs(channels, height, width, bilinear):
    """Traced with eval_shape: the same code path, pad step included, without paying for compilation."""
    model = UNet(out_channels=channels, bilinear=bilinear, features=4, depth=3)
    x = jax.ShapeDtypeStruct((2, height, width, channels), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    y = jax.eval_shape(model.apply, variables, x)
    assert y.shape == (2, height, width, channels) and y.dtype == jnp.float32


def test_bilinear_halves_the_deepest_width_like_milesial():
    params = jax.eval_shape(UNet(3, **TINY).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
    assert params["down2"]["conv"]["conv2"]["kernel"].shape == (3, 3, 8, 8)  # 16 // 2
    assert params["up1"]["conv"]["conv1"]["kernel"].shape == (3, 3, 16, 8)  # concat 8+8 -> mid 16 // 2
    assert params["up2"]["conv"]["conv2"]["kernel"].shape == (3, 3, 4, 4)
    assert params["outc"]["kernel"].shape == (1, 1, 4, 3) and "bias" in params["outc"]


def test_heads_map_linear_outputs_into_their_ranges(tiny):
    x, variables = tiny
    raw = UNet(3, **TINY).apply(variables, x)
    tanh_out = UNet(3, head="tanh", out_range=(-1.0, 1.0), **TINY).apply(variables, x)
    sigmoid_out = UNet(3, head="sigmoid", out_range=(0.0, 2.0), **TINY).apply(variables, x)
    np.testing.assert_allclose(tanh_out, np.tanh(raw), atol=1e-6)
    np.testing.assert_allclose(sigmoid_out, 2.0 / (1.0 + np.exp(-raw)), atol=1e-6)
    assert tanh_out.min() < 0.0 < tanh_out.max()  # a detail band can go negative
    assert 0.0 <= sigmoid_out.min() and sigmoid_out.max() <= 2.0


def test_residual_head_starts_as_the_identity_and_bounds_its_change(tiny):
    x, _ = tiny
    model = UNet(3, head="residual", out_range=(-1.0, 1.0), **TINY)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    np.testing.assert_array_equal(model.apply(variables, x), x)  # zero-initialised change
    outc = jax.tree.map(lambda leaf: leaf + 50.0, variables["params"]["outc"])  # push the change to saturation
    out = model.apply({**variables, "params": {**variables["params"], "outc": outc}}, x)
    assert not np.allclose(out, x)
    assert np.all(np.abs(np.asarray(out - x)) <= 1.0 + 1e-5)  # at most half of out_range's width (float32)
    with pytest.raises(ValueError, match="3 input channels, got 9"):
        UNet(3, head="residual", **TINY).init(jax.random.key(0), jnp.zeros((1, 16, 16, 9)))


def test_bounded_heads_saturate_at_the_ends_of_out_range():
    extremes = jnp.array([-100.0, 0.0, 100.0])
    np.testing.assert_allclose(apply_head(extremes, "tanh", (-1.0, 1.0)), [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(apply_head(extremes, "sigmoid", (0.0, 2.0)), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(apply_head(extremes, "linear", (0.0, 1.0)), extremes)
    with pytest.raises(ValueError, match="head"):
        apply_head(extremes, "relu", (0.0, 1.0))


def test_train_mode_updates_batch_stats_and_eval_mode_is_per_example(tiny):
    model = UNet(3, **TINY)
    x, variables = tiny
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    old_mean = variables["batch_stats"]["inc"]["bn1"]["mean"]
    new_mean = updates["batch_stats"]["inc"]["bn1"]["mean"]
    assert np.all(old_mean == 0.0) and np.abs(new_mean).max() > 0.0
    # The first conv has no bias: the running mean moves 10% (momentum 0.9) towards its batch mean.
    conv_out = jax.lax.conv_general_dilated(x, variables["params"]["inc"]["conv1"]["kernel"], (1, 1),
                                            [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(new_mean, 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)
    eval_batch = model.apply(variables, x)
    np.testing.assert_allclose(model.apply(variables, x[:1]), eval_batch[:1], atol=1e-5)
    train_single, _ = model.apply(variables, x[:1], train=True, mutable=["batch_stats"])
    train_batch, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert np.abs(train_single - train_batch[:1]).max() > 1e-3


def test_adam_steps_reduce_l1_reconstruction_loss(tiny):
    model = UNet(3, **TINY)
    x, variables = tiny
    optimizer = optax.adam(1e-2)

    def loss_fn(params, batch_stats):
        y, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                 mutable=["batch_stats"])
        return jnp.abs(y - x).mean(), updates["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(8):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("bilinear,conv_bias,expected", [
    # sum(p.numel()) of milesial/Pytorch-UNet unet/unet_model.py UNet(n_channels=3, n_classes=3, bilinear=...)
    # built in PyTorch 2.14 (scratch script, not in the repo).
    (True, False, 17_263_107),
    (False, False, 31_037_763),
    # The official fengxxu/ppfer src/models.py UNet(3, 3): same layout, 3x3 convs with PyTorch's default bias.
    (True, True, 17_267_523),
])
def test_full_size_parameter_count_matches_reference(bilinear, conv_bias, expected):
    assert count_params(UNet(3, bilinear=bilinear, conv_bias=conv_bias), (1, 64, 64, 3)) == expected
