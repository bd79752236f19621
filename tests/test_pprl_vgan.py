"""PPRL-VGAN's row: the decoder's wiring, its losses against hand-computed values, the per-clip target draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppfer_jax.baselines import pprl_vgan
from ppfer_jax.config import load_config
from ppfer_jax.models.vgan import UpConv, VGANGenerator, decoder_start
from ppfer_jax.nets import Nets

from conftest import TINY


@pytest.mark.parametrize("size, start, ups", [(32, 4, 3), (64, 4, 4), (112, 7, 4)])
def test_the_decoder_reaches_the_frame_size(size, start, ups):
    assert decoder_start(size) == (start, ups)  # 64 px: their dense 4x4 and four up-samplings
    generator = VGANGenerator(num_classes=5, size=size, features=4, z_dim=8)
    frames = jnp.zeros((2, size, size, 3))
    shapes = jax.eval_shape(lambda: generator.init_with_output(jax.random.key(0), frames)[0])
    assert shapes.shape == (2, size, size, 3)


def test_the_sub_pixel_up_convolution_is_the_stride_2_transposed_convolution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    kernel, bias = rng.normal(size=(5, 5, 5, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    layer = UpConv(6)
    assert jax.tree.map(np.shape, layer.init(jax.random.key(0), x)["params"]) == {"kernel": (5, 5, 5, 6),
                                                                                  "bias": (6,)}
    out = np.asarray(layer.apply({"params": {"kernel": kernel, "bias": bias}}, x))
    expected = np.zeros((2, 6, 8, 6), np.float64) + bias  # y[2m + k - 2] += x[m] w[k] on each axis, by scattering
    for my in range(3):
        for mx in range(4):
            for ky in range(5):
                for kx in range(5):
                    oy, ox = 2 * my + ky - 2, 2 * mx + kx - 2
                    if 0 <= oy < 6 and 0 <= ox < 8:
                        expected[:, oy, ox] += x[:, my, mx] @ kernel[ky, kx]
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_the_decoder_output_changes_with_the_target_identity_and_with_the_code():
    nets = Nets(load_config(TINY))
    variables = nets.init("vgan_g", jax.random.key(0))
    generator = nets.modules["vgan_g"]
    z = jax.random.normal(jax.random.key(1), (3, generator.z_dim))
    people = nets.config.data.num_identities

    def decode(z, target):
        return generator.apply(variables, z, jax.nn.one_hot(target, people), method="decode")

    same = jnp.array([0, 0, 0])
    by_target = jnp.abs(decode(z, same) - decode(z, jnp.array([1, 2, 3]))).max(axis=(1, 2, 3))
    by_code = jnp.abs(decode(z, same) - decode(z[::-1], same))
    assert np.all(by_target > 1e-3)  # c reaches the output ...
    assert np.asarray(by_code).max() > 1e-3  # ... and so does z
    np.testing.assert_array_equal(decode(z, same), decode(z, same))  # eval mode: deterministic


def _bce(logit, label):
    p = 1.0 / (1.0 + np.exp(-logit))
    return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def _ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


def test_the_losses_weigh_their_terms_as_the_published_code():
    rng = np.random.default_rng(0)
    real_fake, identity, expression = rng.normal(size=4), rng.normal(size=(4, 5)), rng.normal(size=(4, 3))
    heads = tuple(jnp.asarray(h, jnp.float32) for h in (real_fake, identity, expression))
    people, expressions, soft = np.array([0, 1, 4, 2]), np.array([2, 0, 1, 1]), np.array([0.9, 0.95, 1.0, 0.92])
    d = pprl_vgan.discriminator_loss(heads, jnp.asarray(soft, jnp.float32), people, expressions)
    expected = (0.25 * _bce(real_fake, soft).mean() + 0.5 * _ce(identity, people).mean()
                + 0.25 * _ce(expression, expressions).mean())
    assert float(d) == pytest.approx(expected, rel=1e-5)

    mean, log_var = rng.normal(size=(4, 6)), rng.normal(size=(4, 6)) * 0.3
    g = pprl_vgan.generator_loss(heads, jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32), people,
                                 expressions)
    kl = np.mean(np.sum(0.5 * (np.exp(log_var) + mean**2 - 1.0 - log_var), axis=1))  # KL(N(m, s^2) || N(0, 1))
    expected = (0.002 * kl + 0.078 * _bce(real_fake, 1.0).mean() + 0.8 * _ce(identity, people).mean()
                + 0.12 * _ce(expression, expressions).mean())
    assert float(g) == pytest.approx(expected, rel=1e-5)
    assert float(pprl_vgan.kl_to_prior(jnp.zeros((2, 6)), jnp.zeros((2, 6)))) == 0.0  # the prior itself


def test_each_clip_keeps_its_target_whatever_batch_it_is_in():
    rng = np.random.default_rng(0)
    clips = jnp.asarray(rng.integers(0, 256, size=(60, 2, 4, 4, 3)), jnp.uint8)
    key = jax.random.key(7)
    targets = np.asarray(pprl_vgan.clip_targets(key, clips, 6))
    order = rng.permutation(60)
    np.testing.assert_array_equal(np.asarray(pprl_vgan.clip_targets(key, clips[order], 6)), targets[order])
    np.testing.assert_array_equal(np.asarray(pprl_vgan.clip_targets(key, clips[:7], 6)), targets[:7])
    assert set(targets.tolist()) == set(range(6))  # 60 draws reach all 6 people
    assert not np.array_equal(np.asarray(pprl_vgan.clip_targets(jax.random.key(8), clips, 6)), targets)
