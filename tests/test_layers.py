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


@pytest.mark.parametrize("side, kernel, channels, expected", [
    (2, (3, 3), 256, "dot_general"),            # a wide conv onto a map at most SMALL_MAP wide: patches x matrix
    (16, (3, 3), 256, "conv_general_dilated"),  # a larger map: XLA's own convolution
    (16, (1, 1), 256, "dot_general"),           # wide and pointwise: a matrix product
    (2, (3, 3), 128, "conv_general_dilated"),   # narrower than WIDE_INPUT: XLA's own, on any map
    (16, (3, 3, 3), 8, "conv_general_dilated"),  # 3-D on a larger map: one 2-D conv over time-shifted copies
])
def test_conv_routes_each_cpu_convolution_to_its_faster_lowering(side, kernel, channels, expected):
    x = jnp.zeros((1, *((4,) if len(kernel) == 3 else ()), side, side, channels))
    k = jnp.zeros((*kernel, channels, 8))
    padding = tuple((n // 2, n // 2) for n in kernel)
    numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape, _layout(len(kernel)))  # as nn.Conv passes them
    primitives = {str(eqn.primitive) for eqn in jax.make_jaxpr(
        lambda x, k: conv(x, k, (1,) * len(kernel), padding, dimension_numbers=numbers))(x, k).jaxpr.eqns}
    assert expected in primitives and ({"dot_general", "conv_general_dilated"} - {expected}) & primitives == set()


@pytest.mark.parametrize("config", ["configs/synthetic.py", "configs/synthetic.py:tiny"])
def test_the_synthetic_configs_networks_are_narrower_than_the_patches_threshold(config):
    """Their convolutions all run XLA's own op on CPU: the patches' taps would only add compile time at these
    widths, and the runs' numbers stay those of lax's convolution (benchmarks/RESULTS.md, 2026-11-30)."""
    from ppfer_jax.config import load_config
    from ppfer_jax.nets import Nets

    nets = Nets(load_config(config))
    widest = 0
    for name in nets.modules:
        variables = jax.eval_shape(lambda name=name: nets.init(name, jax.random.key(0)))
        kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
                   if leaf.ndim >= 4 and "kernel" in jax.tree_util.keystr(path)]
        widest = max([widest, *(shape[-2] for shape in kernels)])
    assert 64 <= widest < layers.WIDE_INPUT  # the default U-Net's bottom takes 128 channels, the tiny one's 64
