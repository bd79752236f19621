"""bf16 compute, float32 parameters and outputs: one check for each architecture, as a run's config builds it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppfer_jax.config import load_config
from ppfer_jax.nets import Nets

from conftest import TINY


@pytest.mark.slow  # compiles each network twice, in float32 and bf16
@pytest.mark.parametrize("name", ["recovery", "v_pl", "f_fc", "f_u"])  # U-Net, ResNet-18, U-ViT, R3D-18
def test_bf16_computes_in_bf16_with_float32_params_and_output(name):
    f32, bf16 = Nets(load_config(TINY)), Nets(load_config(TINY, ["dtype=bfloat16"]))
    x = jax.random.uniform(jax.random.key(1), (2,) + f32.input_shape(name))
    variables = f32.modules[name].init(jax.random.key(0), x, train=False)
    shapes = jax.eval_shape(lambda: bf16.modules[name].init(jax.random.key(0), x, train=False))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}

    y32 = f32.modules[name].apply(variables, x, train=False)
    y16, state = bf16.modules[name].apply(variables, x, train=False, capture_intermediates=True)
    assert y16.dtype == jnp.float32 and not np.array_equal(y16, y32)
    assert any(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(state["intermediates"]))  # really in bf16
    np.testing.assert_allclose(y16, y32, atol=0.1 * float(jnp.abs(y32).max()))
