"""PPRL-VGAN (Chen, Konrad and Ishwar, CVPRW 2018) as a row of ``reproduce``: every frame re-drawn as another
person with the same expression.

Taken from their public Keras code (numbers, not code): frames in [-1, 1]; the networks of
``models/vgan.py``; a target identity c drawn uniformly at random, which the decoder gets and the encoder never
sees; the discriminator on real frames learns 1/4 BCE(real, soft labels in [0.9, 1]) + 1/2 CE(identity, true) +
1/4 CE(expression, true), and on generated frames 1/4 BCE(fake) + 1/2 CE(identity, c) + 1/4 CE(expression, true);
the generator 0.002 KL + 0.078 BCE(D says real) + 0.8 CE(D's identity, c) + 0.12 CE(D's expression, true) (their
MUG weights); per batch one discriminator update on real frames, one on generated ones, then two generator
updates; RMSprop at 3e-4.

Our reading, for video: one c per clip for all its frames (a clip stays one person); every frame of a clip is a
training image; the anonymised clip is decoded from each frame's *mean* code (no sampling noise, so it is
deterministic) with the clip's c, drawn from a key folded with the clip's pixel checksum (independent of batching
and sharding). The generated frames for the discriminator's update are drawn in training mode and do not update
the generator's BatchNorm statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ppfer_jax import losses, metrics
from ppfer_jax.anonymised import map_clips
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import flatten_frames, pick_frames, to_float, to_uint8
from ppfer_jax.stage import Stage, grouped_optimizer, net_variables, stage_key, update_group

GROUPS = {"discriminator": ("vgan_d",), "generator": ("vgan_g",)}
SOFT_REAL = (0.9, 1.0)  # the discriminator's labels for real frames, drawn per frame


def rmsprop(config, section) -> optax.GradientTransformation:
    """Keras' RMSprop (rho 0.9, epsilon 1e-7) at the section's learning rate, as PPRL-VGAN's code trains."""
    del config
    return optax.rmsprop(section.learning_rate, decay=0.9, eps=1e-7)


def to_signed(frames: jax.Array) -> jax.Array:
    """Float frames in [0, 1] -> [-1, 1], PPRL-VGAN's range."""
    return frames * 2.0 - 1.0


def kl_to_prior(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over the code, averaged over the batch."""
    return jnp.mean(-0.5 * jnp.sum(1.0 + log_var - mean**2 - jnp.exp(log_var), axis=-1))


def discriminator_loss(heads, real_fake_target, identity, expression) -> jax.Array:
    """1/4 BCE(real/fake) + 1/2 CE(identity) + 1/4 CE(expression): ``identity`` is the true person for real frames
    and the target c for generated ones; ``real_fake_target`` the soft real labels or zeros."""
    real_fake, identity_logits, expression_logits = heads
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(real_fake, real_fake_target))
    return (0.25 * bce + 0.5 * losses.cross_entropy(identity_logits, identity)
            + 0.25 * losses.cross_entropy(expression_logits, expression))


def generator_loss(heads, mean, log_var, target, expression) -> jax.Array:
    """0.002 KL + 0.078 BCE(D says real) + 0.8 CE(D's identity, c) + 0.12 CE(D's expression, true)."""
    real_fake, identity_logits, expression_logits = heads
    fooled = jnp.mean(optax.sigmoid_binary_cross_entropy(real_fake, jnp.ones_like(real_fake)))
    return (0.002 * kl_to_prior(mean, log_var) + 0.078 * fooled
            + 0.8 * losses.cross_entropy(identity_logits, target)
            + 0.12 * losses.cross_entropy(expression_logits, expression))


def _make_step(nets, config, tx):
    del tx  # the groups are updated in turn with their own optimizer states (``grouped_optimizer``)
    inner = rmsprop(config, config.train.pprl_vgan)
    generator, discriminator = nets.modules["vgan_g"], nets.modules["vgan_d"]
    people = config.data.num_identities

    def step(state, batch, rng):
        params, opt_state = dict(state.params), dict(state.opt_state)
        g_stats = state.batch_stats["vgan_g"]
        video = batch["video"]
        frames = to_signed(flatten_frames(to_float(video))[0])
        per_frame = lambda per_clip: jnp.repeat(per_clip, video.shape[1])  # noqa: E731
        identity, expression = per_frame(batch["identity"]), per_frame(batch["expression"])
        keys = jax.random.split(rng, 9)
        target = per_frame(jax.random.randint(keys[0], (video.shape[0],), 0, people))
        one_hot = jax.nn.one_hot(target, people)
        soft_real = jax.random.uniform(keys[1], (len(frames),), minval=SOFT_REAL[0], maxval=SOFT_REAL[1])

        def generate(g_params, key):
            noise_key, dropout_key = jax.random.split(key)
            noise = jax.random.normal(noise_key, (len(frames), generator.z_dim))
            (fake, mean, log_var), new = generator.apply(
                {"params": g_params, "batch_stats": g_stats}, frames, one_hot, noise, train=True,
                method="reconstruct", mutable=["batch_stats"], rngs={"dropout": dropout_key})
            return fake, mean, log_var, new["batch_stats"]

        def judge(d_params, images, key):
            return discriminator.apply({"params": d_params}, images, train=True, rngs={"dropout": key})

        def update(group, loss_fn, has_aux=False):
            return update_group(params, opt_state, group, GROUPS[group], loss_fn, inner, has_aux=has_aux)

        d_real = update("discriminator", lambda own: discriminator_loss(
            judge(own["vgan_d"], frames, keys[2]), soft_real, identity, expression))
        fake = jax.lax.stop_gradient(generate(params["vgan_g"], keys[3])[0])
        d_fake = update("discriminator", lambda own: discriminator_loss(
            judge(own["vgan_d"], fake, keys[4]), jnp.zeros(len(frames)), target, expression))
        for g_key, d_key in ((keys[5], keys[6]), (keys[7], keys[8])):
            def g_loss(own, g_key=g_key, d_key=d_key):
                fake, mean, log_var, stats = generate(own["vgan_g"], g_key)
                heads = judge(params["vgan_d"], fake, d_key)
                return generator_loss(heads, mean, log_var, target, expression), (stats, heads)
            g_value, (g_stats, heads) = update("generator", g_loss, has_aux=True)
        logs = {"d_real_loss": d_real, "d_fake_loss": d_fake, "g_loss": g_value,
                "fake_target_acc": metrics.accuracy(heads[1], target),
                "fake_expression_acc": metrics.accuracy(heads[2], expression)}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats={**state.batch_stats, "vgan_g": g_stats})
        return new_state, {"loss": g_value, **logs}
    return step


def redraw(nets, variables: dict, frames: jax.Array, target: jax.Array) -> jax.Array:
    """Float frames (N, H, W, 3) in [0, 1] re-drawn from their mean codes as identities ``target`` (N,)."""
    one_hot = jax.nn.one_hot(target, nets.config.data.num_identities)
    out, _, _ = nets.modules["vgan_g"].apply(variables, to_signed(frames), one_hot,
                                             jnp.zeros((len(frames), nets.modules["vgan_g"].z_dim)),
                                             method="reconstruct")
    return (out + 1.0) / 2.0


def _evaluate(ctx):
    """Val: the discriminator's identity head on frames re-drawn as the next person (does the generator draw c?),
    its expression head on them, and on the real frames."""
    nets, people = ctx.nets, ctx.config.data.num_identities

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        target = (batch["identity"] + 1) % people
        fake = redraw(nets, net_variables(state, "vgan_g"), frame, target)
        d = net_variables(state, "vgan_d")
        _, fake_identity, fake_expression = nets.apply("vgan_d", d, to_signed(fake))
        _, real_identity, _ = nets.apply("vgan_d", d, to_signed(frame))
        m = batch["mask"]
        return {"fake_target_acc": metrics.correct_counts(fake_identity, target, m),
                "fake_expression_acc": metrics.correct_counts(fake_expression, batch["expression"], m),
                "real_identity_acc": metrics.correct_counts(real_identity, batch["identity"], m)}
    return evaluator(ctx, counts, "val")


STAGE = Stage("pprl_vgan/train", "pprl_vgan", ("vgan_g", "vgan_d"), (), "train", None, _make_step, _evaluate,
              optimizer=grouped_optimizer(GROUPS, inner=rmsprop))
STAGES = (STAGE,)


def clip_targets(key: jax.Array, video: jax.Array, people: int) -> jax.Array:
    """One target identity per clip (B,), drawn from ``key`` folded with the clip's pixel checksum."""
    checksums = jnp.sum(video.astype(jnp.uint32), axis=tuple(range(1, video.ndim)))
    return jax.vmap(lambda s: jax.random.randint(jax.random.fold_in(key, s), (), 0, people))(checksums)


def anonymised_clips(ctx, split: str, method: str):
    """A split with every clip re-drawn as its random target person."""
    variables = ctx.network("vgan_g", STAGE.name)
    key = stage_key(ctx.config, "pprl_vgan/targets")

    def chain(video: jax.Array) -> jax.Array:
        frames, _ = flatten_frames(to_float(video))
        target = jnp.repeat(clip_targets(key, video, ctx.config.data.num_identities), video.shape[1])
        return to_uint8(redraw(ctx.nets, variables, frames, target)).reshape(video.shape)
    return map_clips(ctx, ctx.source(split), chain)
