"""ppfer_robust's pieces: the code autoencoder, the worst-case bounded objective, the adversaries' round-robin
restart, the stop-gradient and warm-up of its loss, the held-out ridge attacker that chooses its checkpoint, and the
relabelling check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppfer_jax import losses, metrics
from ppfer_jax.config import load_config
from ppfer_jax.nets import Nets, pick_frames, random_frames
from ppfer_jax.recipes import run
from ppfer_jax.stage import grouped_optimizer, make_state, train_stage
from ppfer_jax.stages import robust_privacy as robust
from ppfer_jax.parallel import make_mesh
from ppfer_jax.training import TrainState

TINY = "configs/synthetic.py:tiny"


def test_worst_case_objective_drives_every_adversary_towards_the_uniform_posterior():
    """Gradient descent on a toy batch's features against three fixed linear adversaries (identity readers):
    every adversary's posterior ends near uniform, not only the one that was worst at the start. (With
    'entropy' instead, descent stalls here: its gradient vanishes at confident posteriors.)"""
    objective = "kl_uniform"  # privacy.robust.objective's default
    classes, dim, n = 4, 32, 16  # dim > K * (classes - 1): every adversary can be made uniform at once
    keys = jax.random.split(jax.random.key(0), 3)
    weights = jnp.stack([jax.random.normal(k, (dim, classes)) for k in keys])  # (K, D, C)
    labels = jnp.arange(n) % classes
    features = jax.random.normal(jax.random.key(1), (n, dim)) + 2.0 * jax.nn.one_hot(labels, dim)

    def loss(x):
        return losses.worst_case_privacy_loss(jnp.einsum("nd,kdc->knc", x, weights), labels, objective)

    def max_kl(x):
        logits = jnp.einsum("nd,kdc->knc", x, weights)
        return float(jnp.max(jax.vmap(lambda lg: jnp.mean(losses.kl_uniform_to_p(lg)))(logits)))

    before = max_kl(features)
    x, step = features, jax.jit(jax.grad(loss))
    for _ in range(300):
        x = x - 0.5 * step(x)
    assert before > 1.0
    assert max_kl(x) < 1e-3
    posteriors = jax.nn.softmax(jnp.einsum("nd,kdc->knc", x, weights))
    np.testing.assert_allclose(np.asarray(posteriors), 1.0 / classes, atol=0.02)


@pytest.mark.slow  # compiles the robust stage's networks
def test_restart_gives_exactly_one_adversary_copy_fresh_weights_and_zero_moments():
    config = load_config(TINY)
    nets = Nets(config)
    k = config.privacy.robust.adversaries
    every = config.privacy.robust.restart_every
    trained = {n: nets.init(n, jax.random.key(i)) for i, n in enumerate(run.STAGE_BY_NAME["robust/privacy"].trains)}
    tx = grouped_optimizer(robust.GROUPS)(config, config.train.robust_privacy)
    state = make_state(trained, {}, tx)
    # non-zero moments everywhere, as after some training
    state = state.replace(opt_state=jax.tree.map(lambda x: x + 1.0 if x.ndim else x, state.opt_state))
    for step, copy in ((0, None), (every, 1 % k), (2 * every, 2 % k), (every + 1, None)):
        params, opt_state = robust._restart(nets, config, state.replace(step=jnp.asarray(step)), jax.random.key(9))
        for name in robust.GROUPS["adversaries"]:
            pairs = list(zip(jax.tree.leaves(state.params[name]), jax.tree.leaves(params[name])))
            changed = [any(not np.array_equal(old[i], new[i]) for old, new in pairs) for i in range(k)]
            assert changed == [i == copy for i in range(k)], (step, name)
        mu = opt_state["adversaries"][0].mu["adv_code"]
        for leaf in jax.tree.leaves(mu):
            zeroed = [bool(np.all(np.asarray(leaf[i]) == 0)) for i in range(k)]
            assert zeroed == [i == copy for i in range(k)], step
        # the enhancers are never touched
        assert jax.tree.all(jax.tree.map(np.array_equal, params["r_low"], state.params["r_low"]))
    assert isinstance(state, TrainState)


def test_held_out_ridge_attacker_reads_people_apart_and_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    people, clips, frames, dim = 6, 6, 4, 64
    identity = np.repeat(np.arange(people), clips * frames)
    clip = np.repeat(np.arange(people * clips), frames)
    looks = rng.normal(size=(people, dim))
    readable = looks[identity] + 0.5 * rng.normal(size=(len(identity), dim))
    assert robust.ridge_identity_probe(readable, identity, clip) > 0.95
    noise = rng.normal(size=(len(identity), dim))
    assert robust.ridge_identity_probe(noise, identity, clip) < 0.4  # chance 1/6


def test_relabelling_check_finds_a_permutation_behind_a_chance_accuracy():
    confusion = np.zeros((4, 4))
    for true, predicted in enumerate((1, 2, 3, 0)):  # every person called by another's name
        confusion[true, predicted] = 10
    confusion[0, 0] = 1  # and a little noise
    assert np.trace(confusion) / confusion.sum() < 0.05
    assert metrics.permuted_accuracy(confusion) == pytest.approx(40 / 41)
    # a classifier that mixes everyone up stays low under every relabelling
    assert metrics.permuted_accuracy(np.ones((4, 4))) == pytest.approx(0.25)


def test_confusion_counts_match_numpy_and_honour_the_mask():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20, 5))
    labels = rng.integers(0, 5, 20)
    mask = rng.uniform(size=20) > 0.3
    expected = np.zeros((5, 5))
    for t, p, m in zip(labels, logits.argmax(-1), mask):
        expected[t, p] += m
    np.testing.assert_array_equal(np.asarray(metrics.confusion_counts(jnp.asarray(logits), jnp.asarray(labels), 5,
                                                                      jnp.asarray(mask))), expected)


@pytest.mark.slow  # trains a stage
def test_clip_attacker_learns_identity_from_raw_clips(tmp_path):
    """The adaptive clip attacker is a real attacker: trained from scratch on raw tiny clips it reads identity on
    the val split far above chance (1/6), so a low clip PLR on anonymised clips is the anonymiser's doing."""
    config = load_config(TINY, ["train.clip_attack.steps=120", "train.clip_attack.batch_size=8",
                                "train.clip_attack.learning_rate=3e-3"])
    ctx = run.context(config, tmp_path, make_mesh())
    summary = train_stage(ctx, run.STAGE_BY_NAME["attack/clip_raw"])
    assert summary["eval"]["acc"] >= 0.9


def test_code_autoencoder_output_passes_through_its_code_alone():
    """The band a code autoencoder outputs is a function of its code z alone: the Jacobian of output by input has
    rank at most the code's width, where a U-Net's (whose skips carry every pixel through) has full rank."""
    from ppfer_jax.models import CodeAutoencoder, UNet
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3))

    def jacobian_rank(module):
        variables = module.init(jax.random.key(1), x)
        jac = jax.jacobian(lambda v: module.apply(variables, v.reshape(x.shape)).ravel())(x.ravel())
        return np.linalg.matrix_rank(np.asarray(jac, np.float64), tol=1e-6)

    code = CodeAutoencoder(out_channels=3, size=8, features=4, depth=2, code_dim=5)
    assert jacobian_rank(code) <= 5
    assert jacobian_rank(UNet(out_channels=3, features=4, depth=2, head="residual", out_range=(0.0, 2.0))) > 100
    variables = code.init(jax.random.key(1), x)
    np.testing.assert_array_equal(code.apply(variables, code.apply(variables, x, method="encode"), method="decode"),
                                  code.apply(variables, x))


@pytest.mark.slow  # differentiates the robust stage's whole loss
def test_fidelity_trains_the_decoders_only_and_privacy_waits_for_its_warmup():
    """With only the fidelity term on, the encoders and expression head get no gradient (the decoders learn from a
    fixed code, so fidelity cannot pull identity into it) while the decoders do; the privacy terms' weights are 0
    during the warm-up, then ramp linearly to theirs."""
    config = load_config(TINY, ["privacy.robust.expression_weight=0.0", "privacy.robust.warmup_steps=10"])
    nets = Nets(config)
    params = {n: nets.init(n, jax.random.key(i))["params"] for i, n in enumerate(robust.GROUPS["enhancers"]
                                                                                 + robust.GROUPS["adversaries"])}
    video = jax.random.randint(jax.random.key(5), (2, 4, 32, 32, 3), 0, 256).astype(jnp.uint8)
    batch = {"video": video, "identity": jnp.array([0, 1]), "expression": jnp.array([2, 3])}
    frames = video.reshape((-1, 32, 32, 3)).astype(jnp.float32) / 255
    grads = jax.grad(lambda p: robust._enhancer_loss(nets, config, p, frames, batch, jnp.asarray(0))[0])(params)
    norm = {n: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads[n]))) for n in grads}
    assert norm["expression_code"] == 0.0
    for name in ("r_low", "r_high"):
        layers = {layer: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(tree)))
                  for layer, tree in grads[name].items()}
        encoder = [v for k, v in layers.items() if k.startswith(("down", "to_hidden", "to_code"))]
        decoder = [v for k, v in layers.items() if k.startswith(("from_code", "up", "out"))]
        assert len(encoder) + len(decoder) == len(layers) and len(encoder) == 2 * 2 + 2, sorted(layers)
        assert max(encoder) == 0.0 and min(decoder) > 0.0, (name, layers)
    ramp = [float(robust.privacy_ramp(config, jnp.asarray(s))) for s in (0, 10, 15, 20, 100)]
    assert ramp == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_frames_are_picked_per_clip_one_or_several():
    """``pick_frames``: index (B,) gives frame index[b] of clip b; index (B, n) gives the n frames asked of each clip
    (numpy's fancy indexing as the reference); ``random_frames`` with a count draws them from each own clip."""
    video = np.arange(3 * 5 * 2).reshape(3, 5, 2)  # clip b, frame t -> values 10 b + 2 t, 10 b + 2 t + 1
    one, several = np.array([4, 0, 2]), np.array([[1, 1], [3, 0], [4, 2]])
    np.testing.assert_array_equal(pick_frames(jnp.asarray(video), jnp.asarray(one)), video[np.arange(3), one])
    np.testing.assert_array_equal(pick_frames(jnp.asarray(video), jnp.asarray(several)),
                                  video[np.arange(3)[:, None], several])
    drawn = np.asarray(random_frames(jax.random.key(0), jnp.asarray(video), 4))
    assert drawn.shape == (3, 4, 2)
    assert all(set(drawn[b, :, 0] // 10) == {b} for b in range(3))  # every frame from its own clip
