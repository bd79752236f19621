"""The convolution every model runs (``layers.conv``): its CPU lowerings (patches times a matrix; a 3-D conv as
one 2-D conv over time-shifted copies) are the same function as lax's convolution in value and gradient, for
the models' 2-D and 3-D kernels, strides and paddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppfer_jax.models import layers
from ppfer_jax.models.layers import conv, conv3d_as_2d, conv_as_matmul

CASES = [  # kernel, strides, padding: the models' convolutions
    ((7, 7), (2, 2), ((3, 3), (3, 3))),                  # ResNet stem
    ((3, 3), (2, 2), ((1, 1), (1, 1))),                  # first conv of a stage
    ((1, 1), (2, 2), ((0, 0), (0, 0))),                  # projection shortcut
    ((3, 3), (1, 1), ((1, 1), (1, 1))),                  # U-Net, residual blocks
    ((4, 4), (4, 4), ((0, 0), (0, 0))),                  # U-ViT patch embedding
    ((3, 7, 7), (1, 2, 2), ((1, 1), (3, 3), (3, 3))),    # R3D stem
    ((3, 3, 3), (2, 2, 2), ((1, 1), (1, 1), (1, 1))),    # R3D first conv of stages 2-4
    ((1, 1, 1), (2, 2, 2), ((0, 0), (0, 0), (0, 0))),    # R3D projection shortcut
    ((3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
]


def _layout(rank: int):
    spatial = "DHW"[-rank:]
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


LOWERINGS = ([(conv_as_matmul, case) for case in CASES if max(case[0]) < 7]  # stems never reach it: maps > 4 px
             + [(conv3d_as_2d, case) for case in CASES if len(case[0]) == 3])


@pytest.mark.slow  # compiles eleven conv pairs with their gradients
@pytest.mark.parametrize("lowering, case", LOWERINGS, ids=[f"{f.__name__}-{c[0]}-{c[1]}" for f, c in LOWERINGS])
def test_cpu_lowerings_match_lax_in_value_and_gradient(lowering, case):
    kernel, strides, padding = case
    spatial = (5, 12, 12)[-len(kernel):]
    x = jax.random.normal(jax.random.key(0), (2, *spatial, 3))
    k = jax.random.normal(jax.random.key(1), (*kernel, 3, 4))

    def native(x, k):
        return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_layout(len(kernel)))

    def patches(x, k):
        return lowering(x, k, strides, padding)

    np.testing.assert_allclose(patches(x, k), native(x, k), atol=1e-4, rtol=1e-5)
    probe = jax.random.normal(jax.random.key(2), native(x, k).shape)
    grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * probe), argnums=(0, 1))(x, k) for f in (native, patches)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-3, rtol=1e-4)


def test_conv_takes_the_native_op_for_what_patches_do_not_cover():
    """Grouped or dilated convolutions and 'SAME' padding run lax's op (the hook must not change them)."""
    x = jax.random.normal(jax.random.key(0), (1, 9, 9, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape, _layout(2))
    grouped = conv(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers, feature_group_count=2)
    expected = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers,
                                            feature_group_count=2)
    np.testing.assert_array_equal(grouped, expected)
    k = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))
    dilated = conv(x, k, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=numbers)
    np.testing.assert_array_equal(dilated, jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", rhs_dilation=(2, 2),
                                                                        dimension_numbers=numbers))


@pytest.mark.parametrize("side, kernel, expected", [
    (2, (3, 3), "dot_general"),             # a map at most SMALL_MAP wide: patches times a matrix
    (16, (3, 3), "conv_general_dilated"),   # a larger map: XLA's own convolution
    (16, (1, 1), "dot_general"),            # pointwise: a matrix product
    (16, (3, 3, 3), "conv_general_dilated"),  # 3-D on a larger map: one 2-D conv over time-shifted copies
])
def test_conv_routes_each_cpu_convolution_to_its_faster_lowering(side, kernel, expected, monkeypatch):
    monkeypatch.setattr(layers, "PATCHES_ON_CPU", True)
    x = jnp.zeros((1, *((4,) if len(kernel) == 3 else ()), side, side, 8))
    k = jnp.zeros((*kernel, 8, 8))
    padding = tuple((n // 2, n // 2) for n in kernel)
    numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape, _layout(len(kernel)))  # as nn.Conv passes them
    primitives = {str(eqn.primitive) for eqn in jax.make_jaxpr(
        lambda x, k: conv(x, k, (1,) * len(kernel), padding, dimension_numbers=numbers))(x, k).jaxpr.eqns}
    assert expected in primitives and ({"dot_general", "conv_general_dilated"} - {expected}) & primitives == set()


def test_patches_are_off_by_default():
    """Off by default (their compile cost; benchmarks/RESULTS.md): a small map runs XLA's own convolution."""
    x, k = jnp.zeros((1, 2, 2, 8)), jnp.zeros((3, 3, 8, 8))
    numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape, _layout(2))
    primitives = {str(eqn.primitive) for eqn in jax.make_jaxpr(
        lambda x, k: conv(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers))(x, k).jaxpr.eqns}
    assert "conv_general_dilated" in primitives and "dot_general" not in primitives
