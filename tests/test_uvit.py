"""U-ViT feature compensator."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppfer_jax.models.uvit import Attention, UViT, timestep_embedding, unpatchify, uvit_size

TINY = dict(img_size=8, patch_size=2, in_channels=3, **uvit_size("tiny"))


def init(model, x, **kwargs):
    """Jitted init with the rbg generator: far cheaper to compile on CPU than eager threefry draws."""
    return jax.jit(lambda key: model.init(key, x, **kwargs))(jax.random.key(0, impl="rbg"))


def count_params(model):
    shape = (1, model.img_size, model.img_size, model.in_channels)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.fixture(scope="module")
def tiny():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    model = UViT(num_classes=5, **TINY)
    return model, x, init(model, x)


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    t = jnp.array([0.0, 3.0, 250.5])
    embedding = np.asarray(timestep_embedding(t, 8))
    freqs = 10000.0 ** (-np.arange(4) / 4)
    expected = np.concatenate([np.cos(np.outer(t, freqs)), np.sin(np.outer(t, freqs))], axis=1)
    np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-5)
    odd = timestep_embedding(t, 9)
    assert odd.shape == (3, 9) and np.all(odd[:, -1] == 0.0)


def test_unpatchify_inverts_row_major_patch_extraction():
    image = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    patches = image.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 12)
    np.testing.assert_array_equal(unpatchify(jnp.asarray(patches), 2, 3, 2), image)


def test_attention_heads_split_qkv_as_three_by_heads_by_head_dim():
    """Checks the (3, heads, head_dim) layout of the qkv features against numpy."""
    dim, heads = 8, 2
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 5, dim))
    module = Attention(dim, heads, qkv_bias=True)
    params = init(module, x)["params"]
    qkv = np.asarray(x[0]) @ np.asarray(params["qkv"]["kernel"]) + np.asarray(params["qkv"]["bias"])
    q, k, v = qkv.reshape(5, 3, heads, dim // heads).transpose(1, 2, 0, 3)
    logits = q @ k.transpose(0, 2, 1) / math.sqrt(dim // heads)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = (weights @ v).transpose(1, 0, 2).reshape(5, dim)
    expected = mixed @ np.asarray(params["proj"]["kernel"]) + np.asarray(params["proj"]["bias"])
    np.testing.assert_allclose(module.apply({"params": params}, x)[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("out_channels,use_conv", [(None, True), (5, False)])
def test_output_is_nhwc_float32_of_input_size(out_channels, use_conv):
    model = UViT(out_channels=out_channels, use_conv=use_conv, **TINY)
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    y = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.PRNGKey(0), x), x)
    assert y.shape == (2, 8, 8, out_channels or 3) and y.dtype == jnp.float32


def test_long_skips_fuse_each_in_block_into_one_out_block(tiny):
    model, _, variables = tiny
    params = variables["params"]
    skips = {name: block["skip_linear"]["kernel"].shape for name, block in params.items()
             if isinstance(block, dict) and "skip_linear" in block}
    dim = model.embed_dim
    assert skips == {f"out_blocks_{i}": (2 * dim, dim) for i in range(model.depth // 2)}
    assert sum(name.startswith("in_blocks_") for name in params) == model.depth // 2
    assert "mid_block" in params


def test_label_token_conditions_and_defaults_to_the_null_class(tiny):
    model, x, variables = tiny
    assert variables["params"]["pos_embed"].shape == (1, 2 + 16, model.embed_dim)  # label + time + 4x4 patches
    outputs = [model.apply(variables, x, labels=jnp.array([c, c])) for c in (0, 1, 4)]
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-4
    np.testing.assert_array_equal(model.apply(variables, x), outputs[2])


def test_token_order_is_label_time_patches_as_in_uvit(tiny):
    """Moving a shift from pos_embed row 0 into the label embedding leaves the label token
    (label_emb + pos_embed[0]) unchanged only if the label token comes first; a checkpoint's
    pos_embed rows are only meaningful in U-ViT's order."""
    model, x, variables = tiny
    params = variables["params"]
    shift = jax.random.normal(jax.random.PRNGKey(3), (model.embed_dim,))
    moved = {**params, "pos_embed": params["pos_embed"].at[0, 0].add(-shift),
             "label_emb": {"embedding": params["label_emb"]["embedding"] + shift}}
    reference = model.apply(variables, x)
    np.testing.assert_allclose(model.apply({"params": moved}, x), reference, atol=1e-5)
    into_time_row = {**moved, "pos_embed": params["pos_embed"].at[0, 1].add(-shift)}
    assert np.abs(model.apply({"params": into_time_row}, x) - reference).max() > 1e-4


def test_fixed_timestep_is_used_when_none_is_given(tiny):
    model, x, variables = tiny
    default = model.apply(variables, x)
    np.testing.assert_array_equal(default, model.apply(variables, x, timesteps=jnp.array([1.0, 1.0])))
    later = model.clone(timestep=500.0).apply(variables, x)
    np.testing.assert_array_equal(later, model.apply(variables, x, timesteps=500.0))
    assert np.abs(later - default).max() > 1e-4


def test_unconditional_model_has_one_extra_token_and_optional_time_mlp():
    model = UViT(mlp_time_embed=True, **TINY)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
    dim = model.embed_dim
    assert params["pos_embed"].shape == (1, 1 + 16, dim) and "label_emb" not in params
    assert params["time_embed_0"]["kernel"].shape == (dim, 4 * dim)
    assert params["time_embed_2"]["kernel"].shape == (4 * dim, dim)


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="img_size"):
        UViT(**TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))


def test_adam_steps_reduce_mse(tiny):
    model, x, variables = tiny
    target = jnp.tanh(x)
    optimizer = optax.adam(3e-3)

    def loss_fn(params):
        return jnp.mean((model.apply({"params": params}, x) - target) ** 2)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    params = variables["params"]
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(8):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("name,expected", [
    ("S", (512, 12, 8)), ("M", (768, 16, 12)), ("L", (1024, 20, 16)), ("H", (1152, 28, 16)),
])
def test_named_sizes_match_uvit_configs(name, expected):
    """baofff/U-ViT configs/*.py: depth there counts in+out blocks; the mid block comes on top."""
    assert tuple(uvit_size(name).values()) == expected


@pytest.mark.parametrize("fields,expected", [
    # sum(p.numel()) of baofff/U-ViT libs/uvit.py UViT built in PyTorch 2.14 with the config's nnet fields
    # (scratch script, not in the repo); H/2 is the paper's "ImageNet 256x256 (U-ViT-H/2)", ~501M in U-ViT's paper.
    (dict(img_size=32, patch_size=2, in_channels=4, num_classes=1001, use_conv=False, **uvit_size("H")),
     500_832_016),  # configs/imagenet256_uvit_huge.py
    (dict(img_size=32, patch_size=2, in_channels=3, **uvit_size("S")), 44_255_328),  # configs/cifar10_uvit_small.py
    (dict(img_size=64, patch_size=4, in_channels=3, num_classes=1000, **uvit_size("M")),
     130_940_292),  # configs/imagenet64_uvit_mid.py
])
def test_full_size_parameter_count_matches_reference(fields, expected):
    assert count_params(UViT(**fields)) == expected
