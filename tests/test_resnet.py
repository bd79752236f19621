"""2-D ResNet: torchvision's sizes and outputs, BatchNorm state handling, a training step."""

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
    formula_variables,
    losses_over_steps,
    num_elements,
)

from ppfer_jax.models.resnet import ResNet, resnet18, resnet34, resnet50

TINY = dict(width=8)


def random_images(channels: int, size: int = 32, batch: int = 4) -> jax.Array:
    return jax.random.uniform(jax.random.key(1, impl="rbg"), (batch, size, size, channels))


# Facts from the reference, measured with torchvision 0.29.1 at 1000 classes:
# sum(p.numel() for p in model.parameters()) and the running_mean + running_var buffer sizes.
@pytest.mark.parametrize("constructor, num_params, num_running_stats", [
    (resnet18, 11_689_512, 9_600),
    (resnet34, 21_797_672, 17_024),
    (resnet50, 25_557_032, 53_120),
])
def test_full_size_matches_torchvision_counts(constructor, num_params, num_running_stats):
    shapes = jax.eval_shape(constructor(1000).init, KEY, jnp.zeros((1, 64, 64, 3)))
    assert num_elements(shapes["params"]) == num_params
    assert num_elements(shapes["batch_stats"]) == num_running_stats


# Facts from the reference: eval-mode logits of torchvision 0.29.1 resnet18 / resnet50 (num_classes=6;
# resnet50's conv1 rebuilt as Conv2d(9, 64, 7, 2, 3, bias=False) for a 9-channel input) on CPU in
# float32, with every tensor set by `formula_value` (torch layout = this layout transposed, names
# mapped as in resnet.py's docstring) and the NCHW transpose of `formula_input(shape)` as input.
# Odd image sizes make wrong padding show; SAME padding, an unpadded max-pool or the stride on the
# bottleneck's first 1x1 conv each move these logits by more than 7e-4.
@pytest.mark.parametrize("constructor, shape, torchvision_logits", [
    (resnet18, (2, 37, 41, 3), [[-0.033755, 0.004853, 0.011167, -0.017042, -0.027033, 0.014339],
                                [-0.040414, 0.007891, 0.021555, -0.007328, -0.025498, 0.006509]]),
    (resnet50, (2, 45, 33, 9), [[-0.015119, 0.053864, 0.052691, -0.015082, -0.066152, -0.035639],
                                [-0.019210, 0.049259, 0.051130, -0.012394, -0.061291, -0.032360]]),
])
def test_full_size_logits_match_torchvision(constructor, shape, torchvision_logits):
    model = constructor(6)
    x = formula_input(shape)
    logits = jax.jit(model.apply)(formula_variables(model, x), x)
    np.testing.assert_allclose(logits, torchvision_logits, atol=1e-5)


@pytest.mark.parametrize("small_input, reduction", [(False, 32), (True, 8)])
def test_stage4_resolution_reflects_stem(small_input, reduction):
    model = resnet18(10, small_input=small_input, **TINY)
    x = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda: model.init_with_output(KEY, x, capture_intermediates=True)[1])
    stage4 = shapes["intermediates"]["stage4_block1"]["__call__"][0]
    assert stage4.shape == (1, 64 // reduction, 64 // reduction, 8 * 8)


def test_small_input_changes_only_the_stem_kernel():
    x = jnp.zeros((1, 32, 32, 3))
    standard = jax.eval_shape(resnet18(10).init, KEY, x)["params"]
    small = jax.eval_shape(resnet18(10, small_input=True).init, KEY, x)["params"]
    assert num_elements(standard) - num_elements(small) == (7 * 7 - 3 * 3) * 3 * 64


def test_bottleneck_names_and_projection_shapes():
    shapes = jax.eval_shape(resnet50(10, **TINY).init, KEY, jnp.zeros((1, 32, 32, 3)))["params"]
    # Stage 1 projects 8 -> 32 channels at stride 1; v1.5 puts stage 2's stride on the 3x3 conv.
    assert shapes["stage1_block0"]["downsample_conv"]["kernel"].shape == (1, 1, 8, 32)
    assert shapes["stage2_block0"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    assert "downsample_conv" not in shapes["stage2_block1"]
    assert shapes["head"]["kernel"].shape == (8 * 8 * 4, 10)


def test_unknown_block_is_rejected():
    with pytest.raises(ValueError, match="bottleneck"):
        ResNet(stage_sizes=(1,), block="basci", num_classes=2).init(KEY, random_images(3))


@pytest.fixture(scope="module")
def tiny_resnet18():
    """resnet18 at width 8 on 9-channel (wavelet detail band) 32 px images, initialised once.

    Comes with its jitted eval apply, so tests share one compilation.
    """
    model = resnet18(5, **TINY)
    x = random_images(9)
    return model, jax.jit(model.init)(KEY, x), x, jax.jit(model.apply)


def test_tiny_forward_and_batch_stats(tiny_resnet18):
    model, variables, x, eval_apply = tiny_resnet18
    assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 9, 8)
    assert_batch_stats_semantics(model, variables, x, eval_apply)


def test_init_follows_torchvision_defaults(tiny_resnet18):
    params = tiny_resnet18[1]["params"]
    # Convs: kaiming normal with fan_out (3*3*64, not fan_in 3*3*32), gain sqrt(2); 18,432 samples.
    conv = params["stage4_block0"]["conv1"]["kernel"]
    assert conv.shape == (3, 3, 32, 64)
    assert abs(float(conv.std()) / math.sqrt(2 / (3 * 3 * 64)) - 1) < 0.03
    assert jnp.array_equal(params["stage4_block1"]["bn2"]["scale"], jnp.ones(64))
    # fc keeps torch's nn.Linear default: kernel and bias uniform in +-1/sqrt(fan_in).
    bound = 1 / math.sqrt(64)
    assert float(jnp.abs(params["head"]["kernel"]).max()) <= bound
    assert float(jnp.abs(params["head"]["bias"]).max()) <= bound
    assert float(jnp.abs(params["head"]["kernel"]).max()) > 0.9 * bound


def test_jitted_steps_reduce_loss_on_a_fixed_batch(tiny_resnet18):
    model, variables, x, _ = tiny_resnet18
    losses = losses_over_steps(model, variables, x, optax.adam(1e-2))
    assert losses[-1] < 0.5 * losses[0]
