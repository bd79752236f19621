"""R3D-18: torchvision's sizes and strides, BatchNorm state handling, a training step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from classifier_helpers import (
    KEY,
    assert_batch_stats_semantics,
    formula_input,
    formula_value,
    losses_over_steps,
    num_elements,
)
from flax.traverse_util import flatten_dict, unflatten_dict

from ppfer_jax.models.r3d import r3d_18


@pytest.fixture(scope="module")
def tiny_r3d():
    """r3d_18 at width 8 on 4-frame 32 px clips, initialised once.

    Comes with its jitted eval apply, so tests share one compilation.
    """
    model = r3d_18(5, width=8)
    x = jax.random.uniform(jax.random.key(1, impl="rbg"), (4, 4, 32, 32, 3))
    return model, jax.jit(model.init)(KEY, x), x, jax.jit(model.apply)


def test_full_size_matches_torchvision_counts():
    # Facts from the reference, measured on torchvision 0.29.1 r3d_18() (400 classes):
    # sum(p.numel() for p in model.parameters()) and the running_mean + running_var buffer sizes.
    shapes = jax.eval_shape(r3d_18(400).init, KEY, jnp.zeros((1, 4, 32, 32, 3)))
    assert num_elements(shapes["params"]) == 33_371_472
    assert num_elements(shapes["batch_stats"]) == 9_600


def test_full_size_logits_match_torchvision():
    # Facts from the reference: eval-mode logits of torchvision 0.29.1 r3d_18(num_classes=6) on CPU in
    # float32, every tensor set by `formula_value` (torch layout = this layout transposed, names mapped
    # as in r3d.py's docstring), input the NCTHW transpose of `formula_input((2, 5, 35, 29, 3))`.
    # Odd sizes make wrong padding show: SAME padding moves these logits by 6e-3.
    model = r3d_18(6)
    x = formula_input((2, 5, 35, 29, 3))
    shapes = jax.eval_shape(model.init, KEY, x)
    variables = unflatten_dict({path: jnp.asarray(formula_value(path[-1], leaf.shape))
                                for path, leaf in flatten_dict(shapes).items()})
    logits = jax.jit(model.apply)(variables, x)
    torchvision_logits = [[-0.014025, 0.062336, 0.061996, -0.012132, -0.071835, -0.045565],
                          [-0.004900, 0.075541, 0.069081, -0.016641, -0.084455, -0.056547]]
    np.testing.assert_allclose(logits, torchvision_logits, atol=1e-5)


def test_stem_keeps_time_and_later_stages_halve_it():
    model = r3d_18(10, width=8)
    x = jnp.zeros((1, 8, 32, 32, 3))
    shapes = jax.eval_shape(
        lambda: model.init_with_output(KEY, x, capture_intermediates=True)[1])["intermediates"]
    assert shapes["stem_conv"]["__call__"][0].shape == (1, 8, 16, 16, 8)
    assert shapes["stage1_block1"]["__call__"][0].shape == (1, 8, 16, 16, 8)
    assert shapes["stage2_block1"]["__call__"][0].shape == (1, 4, 8, 8, 16)
    assert shapes["stage4_block1"]["__call__"][0].shape == (1, 1, 2, 2, 64)
    params = jax.eval_shape(model.init, KEY, x)["params"]
    assert params["stem_conv"]["kernel"].shape == (3, 7, 7, 3, 8)
    assert "downsample_conv" not in params["stage1_block0"]
    assert params["stage2_block0"]["downsample_conv"]["kernel"].shape == (1, 1, 1, 8, 16)


def test_rejects_images_without_a_time_axis():
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        r3d_18(5, width=8).init(KEY, jnp.zeros((2, 32, 32, 3)))


def test_tiny_forward_and_batch_stats(tiny_r3d):
    model, variables, x, eval_apply = tiny_r3d
    assert_batch_stats_semantics(model, variables, x, eval_apply)


def test_init_follows_torchvision_defaults(tiny_r3d):
    params = tiny_r3d[1]["params"]
    # Convs: kaiming normal with fan_out (27*64, not fan_in 27*32), gain sqrt(2); 55,296 samples.
    conv = params["stage4_block0"]["conv1"]["kernel"]
    assert conv.shape == (3, 3, 3, 32, 64)
    assert abs(float(conv.std()) / math.sqrt(2 / (3 * 3 * 3 * 64)) - 1) < 0.03
    # The video ResNet re-initialises fc as N(0, 0.01) with zero bias.
    assert abs(float(params["head"]["kernel"].std()) / 0.01 - 1) < 0.2
    assert jnp.array_equal(params["head"]["bias"], jnp.zeros(5))


def test_jitted_steps_reduce_loss_on_a_fixed_batch(tiny_r3d):
    model, variables, x, _ = tiny_r3d
    losses = losses_over_steps(model, variables, x, optax.sgd(0.1, momentum=0.9))
    assert losses[-1] < 0.5 * losses[0]
