"""The adversarial CNN of Narula, Wang and Chaspari (2020) as a row of ``reproduce``.

Only the abstract is public: a convolutional transformation of face images, trained by an iterative procedure
that minimises identity information and maximises emotion information, compared with a CNN trained only for
emotion and one trained only for identity. The details are ours, the standard form of that procedure:

* the transformation ``narula_t``: a small U-Net on frames with the residual head (frame + a bounded change from a
  zero-initialised output conv), so it starts as the identity map;
* ``rounds`` rounds (``train.narula.steps`` split by ``baselines.narula.phase_steps``), each of three phases on all
  frames of the batch's clips:
  (a) the transformation and an emotion head (``narula_emotion``, a ResNet) minimise the emotion CE;
  (b) an identity classifier (``narula_identity``, a ResNet; from fresh weights at every round when
      ``restart_identity``, else continued) learns identity from the transformed frames;
  (c) the transformation alone minimises emotion CE - ``identity_weight`` x identity CE, both heads frozen;
* the anonymised clip is the transformation of each frame.

The two reference CNNs of the abstract are trained on the raw frames (``narula/emotion_only``,
``narula/identity_only``, the same ResNets); the row's note gives their val accuracies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppfer_jax import losses, metrics
from ppfer_jax.anonymised import map_clips
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import flatten_frames, pick_frames, to_float, to_uint8
from ppfer_jax.stage import Stage, grouped_optimizer, net_variables, optimizer_for, update_group
from ppfer_jax.stages.classifiers import frame_classifier_stage
from ppfer_jax.training import PhasedStep

# Optimizer states: the transformation keeps one for phase (a) and one for phase (c).
GROUPS = {"emotion": ("narula_t", "narula_emotion"), "identity": ("narula_identity",), "transformer": ("narula_t",)}


def phase_of(config, step):
    """0, 1 or 2: the phase (a), (b) or (c) of the round that ``step`` (an int or an array) is in."""
    a, b, _ = config.baselines.narula.phase_steps
    at = step % sum(config.baselines.narula.phase_steps)
    return (at >= a) * 1 + (at >= a + b) * 1


def _head(nets, name, params, batch_stats, frames, *, train: bool):
    """A head's logits and batch statistics: training mode when its phase trains it, else frozen (eval mode)."""
    if train:
        return nets.apply_train(name, params[name], batch_stats[name], frames)
    return nets.apply(name, {"params": params[name], "batch_stats": batch_stats[name]}, frames), batch_stats[name]


def _make_step(nets, config, tx) -> PhasedStep:
    del tx  # the phases update their groups with their own optimizer states (``grouped_optimizer``)
    inner = optimizer_for(config, config.train.narula)
    section = config.baselines.narula
    round_steps = sum(section.phase_steps)

    def losses_of(params, stats, batch, *, train_emotion: bool, train_identity: bool):
        """(emotion CE, identity CE, logs, new batch_stats) of the batch's transformed frames."""
        frames, _ = flatten_frames(to_float(batch["video"]))
        emotion = jnp.repeat(batch["expression"], batch["video"].shape[1])
        identity = jnp.repeat(batch["identity"], batch["video"].shape[1])
        out, s_t = nets.apply_train("narula_t", params["narula_t"], stats["narula_t"], frames)
        e_logits, s_e = _head(nets, "narula_emotion", params, stats, out, train=train_emotion)
        i_logits, s_i = _head(nets, "narula_identity", params, stats, out, train=train_identity)
        e_ce, i_ce = losses.cross_entropy(e_logits, emotion), losses.cross_entropy(i_logits, identity)
        logs = {"emotion_ce": e_ce, "identity_ce": i_ce, "emotion_acc": metrics.accuracy(e_logits, emotion),
                "identity_acc": metrics.accuracy(i_logits, identity)}
        return e_ce, i_ce, logs, {"narula_t": s_t, "narula_emotion": s_e, "narula_identity": s_i}

    def phase_step(group: str, objective, phase: int, **modes):
        """One phase's step: ``group``'s networks minimise ``objective(emotion CE, identity CE)``."""
        def step(state, batch, rng):
            params, opt_state = dict(state.params), dict(state.opt_state)
            if group == "identity" and section.restart_identity:
                # a fresh classifier at the first step of each round's phase (b)
                fresh = jnp.equal(state.step % round_steps, section.phase_steps[0])
                new = nets.init("narula_identity", jax.random.fold_in(rng, state.step))["params"]
                params["narula_identity"] = jax.tree.map(lambda f, o: jnp.where(fresh, f, o), new,
                                                         params["narula_identity"])
                opt_state["identity"] = jax.tree.map(
                    lambda leaf: jnp.where(fresh, jnp.zeros_like(leaf), leaf) if leaf.ndim else leaf,
                    opt_state["identity"])

            def loss_fn(p):
                e_ce, i_ce, logs, new_stats = losses_of({**params, **p}, state.batch_stats, batch, **modes)
                return objective(e_ce, i_ce), (logs, new_stats)
            _, (logs, new_stats) = update_group(params, opt_state, group, GROUPS[group], loss_fn, inner, has_aux=True)
            stats = {n: new_stats[n] if n in GROUPS[group] else state.batch_stats[n] for n in state.batch_stats}
            return state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=stats), {
                "loss": logs["emotion_ce"], **logs, "phase": jnp.float32(phase)}
        return step

    steps = (phase_step("emotion", lambda e, i: e, 0, train_emotion=True, train_identity=False),
             phase_step("identity", lambda e, i: i, 1, train_emotion=False, train_identity=True),
             phase_step("transformer", lambda e, i: e - section.identity_weight * i, 2, train_emotion=False,
                        train_identity=False))
    return PhasedStep(steps, lambda step: phase_of(config, step))


def _evaluate(ctx):
    """Val: the emotion head and the identity classifier on the transformed frames."""
    nets = ctx.nets

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        out = nets.apply("narula_t", net_variables(state, "narula_t"), frame)
        m = batch["mask"]
        return {"emotion_acc": metrics.correct_counts(nets.apply("narula_emotion",
                                                                 net_variables(state, "narula_emotion"), out),
                                                      batch["expression"], m),
                "identity_acc": metrics.correct_counts(nets.apply("narula_identity",
                                                                  net_variables(state, "narula_identity"), out),
                                                       batch["identity"], m)}
    return evaluator(ctx, counts, "val")


def check_schedule(config) -> None:
    """The stage's steps must be whole rounds of the three phases."""
    phases, steps = tuple(config.baselines.narula.phase_steps), config.train.narula.steps
    if len(phases) != 3 or min(phases) < 1 or steps % sum(phases):
        raise ValueError(f"config baselines.narula.phase_steps {phases}: expected three positive step counts whose "
                         f"sum divides train.narula.steps ({steps})")


STAGE = Stage("narula/train", "narula", ("narula_t", "narula_emotion", "narula_identity"), (), "train", None,
              _make_step, _evaluate, optimizer=grouped_optimizer(GROUPS))
EMOTION_ONLY = frame_classifier_stage("narula/emotion_only", "narula_reference", "narula_emotion", "expression",
                                      "acc")
IDENTITY_ONLY = frame_classifier_stage("narula/identity_only", "narula_reference", "narula_identity", "identity",
                                       "acc")
STAGES = (STAGE, EMOTION_ONLY, IDENTITY_ONLY)


def anonymised_clips(ctx, split: str, method: str):
    """A split with every frame passed through the trained transformation."""
    variables = ctx.network("narula_t", STAGE.name)

    def chain(video: jax.Array) -> jax.Array:
        frames, _ = flatten_frames(to_float(video))
        return to_uint8(ctx.nets.apply("narula_t", variables, frames)).reshape(video.shape)
    return map_clips(ctx, ctx.source(split), chain)
