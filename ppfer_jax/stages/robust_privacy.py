"""Algorithm 1 made robust (the ``ppfer_robust`` row): privacy that holds against attackers the enhancers never
saw.

The paper's Algorithm 1 maximises a frozen controller's CE. A frozen (or single) adversary is fooled by a fixed
relabelling of identities, which a freshly trained attacker reads straight back (Elazar & Goldberg 2018; the
adversary restarts of VITA, Wu et al., TPAMI; SPAct). This stage keeps the paper's pipeline -- two U-Net band
enhancers, the inverse wavelet, then Algorithm 2's compensator -- and changes only how the enhancers are trained
(``privacy.robust``):

* a bounded objective whose optimum is only the uniform posterior (``kl_uniform`` or ``entropy``,
  ``ppfer_jax/losses.py``), taken as the worst case over ``adversaries`` identity classifiers per band, stacked
  and applied with ``jax.vmap``, plus the frozen band controller (``with_controllers``);
* the adversaries are co-trained on the enhancers' current output, alternating with the enhancer update (each
  group with its own optimizer state), and one of them is restarted from fresh weights every ``restart_every``
  steps, round-robin, so the enhancers never settle on fooling one fixed classifier;
* expression kept: the frozen expression controller C_fc's CE on the merged frames G (``expression_weight``),
  and an L1 fidelity term to the original frames (``fidelity_weight``) that keeps them faces;
* the checkpoint is chosen on val by a held-out attacker trained from scratch at every evaluation -- a ridge
  classifier on G's pixels, fit on half of each person's val clips and scored on the other half -- never by
  the adversaries it trained against nor by the attackers the report names (frozen V_pl, the adaptive frame
  and clip attackers): the score is C_fc's accuracy on G minus that attacker's accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppfer_jax import losses, metrics
from ppfer_jax.evaluation import GATHER, evaluator
from ppfer_jax.nets import WAVELET, flatten_frames, to_float
from ppfer_jax.stage import Stage, grouped_optimizer, net_variables, optimizer_for

BANDS = (("f_low", "adv_low", "c_low"), ("f_high", "adv_high", "c_high"))  # enhancer, adversaries, controller
GROUPS = {"enhancers": ("f_low", "f_high"), "adversaries": ("adv_low", "adv_high")}


def _stacked(nets, name: str, variables: dict, x: jax.Array, *, train: bool):
    """Every copy of a stacked adversary on the same input: logits (K, N, classes) and, in training, new stats.

    ``privacy.robust.copies``: 'vmap' batches the copies' convolutions into one grouped convolution (for
    accelerators); 'loop' unrolls them into K ordinary ones, 2.4x faster on XLA's CPU backend (benchmarks/RESULTS.md).
    """
    def one(v):
        if train:
            return nets.apply_train(name, v["params"], v["batch_stats"], x)
        return nets.apply(name, v, x), v["batch_stats"]
    mode = nets.config.privacy.robust.copies
    if mode == "vmap":
        return jax.vmap(one)(variables)
    if mode == "loop":
        outs = [one(jax.tree.map(lambda leaf, k=k: leaf[k], variables))
                for k in range(jax.tree.leaves(variables)[0].shape[0])]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    raise ValueError(f"config privacy.robust.copies: expected 'vmap' or 'loop', got {mode!r}")


def _some_frames(x: jax.Array, index: jax.Array) -> jax.Array:
    """Frames (B*T, ...) of B clips -> the frames ``index`` (B, n) of each clip, (B*n, ...)."""
    clips = x.reshape(index.shape[:1] + (-1,) + x.shape[1:])
    picked = jnp.take_along_axis(clips, index.reshape(index.shape + (1,) * (x.ndim - 1)), axis=1)
    return picked.reshape((-1,) + x.shape[1:])


def _enhancer_loss(nets, config, params, batch_stats, frozen, frames, batch, index):
    """The enhancers' loss on float frames (B*T, H, W, 3): worst-case privacy per band on the frames ``index`` of each
    clip, plus expression and fidelity on every frame."""
    robust = config.privacy.robust
    labels = jnp.repeat(batch["identity"], index.shape[1])
    outputs, stats, logs, privacy = [], {}, {}, 0.0
    for (enhancer, adversary, controller), band in zip(BANDS, nets.bands(frames)):
        out, stats[enhancer] = nets.apply_train(enhancer, params[enhancer], batch_stats[enhancer], band)
        outputs.append(out)
        seen = _some_frames(out, index)
        logits, _ = _stacked(nets, adversary, {"params": params[adversary], "batch_stats": batch_stats[adversary]},
                             seen, train=False)
        opponents = logits
        if robust.with_controllers:
            opponents = jnp.concatenate([logits, nets.apply(controller, frozen[controller], seen)[None]])
        privacy += losses.worst_case_privacy_loss(opponents, labels, robust.objective)
        logs[f"{adversary}_acc"] = jnp.mean(jax.vmap(lambda lg: metrics.accuracy(lg, labels))(logits))
    g = nets.merge(*outputs)
    expression_labels = jnp.repeat(batch["expression"], batch["video"].shape[1])
    expression_ce = losses.cross_entropy(nets.apply("c_fc", frozen["c_fc"], g), expression_labels)
    fidelity = losses.l1(g, frames)
    total = privacy + robust.expression_weight * expression_ce + robust.fidelity_weight * fidelity
    return total, ({**logs, "privacy": privacy, "expression_ce": expression_ce, "fidelity_l1": fidelity}, stats)


def _adversary_loss(nets, params, batch_stats, bands, labels):
    """Each adversary copy's identity CE on the (fixed) enhanced bands, summed over copies and bands."""
    total, stats, logs = 0.0, {}, {}
    for (_, adversary, _), band in zip(BANDS, bands):
        logits, stats[adversary] = _stacked(nets, adversary, {"params": params[adversary],
                                                              "batch_stats": batch_stats[adversary]}, band,
                                            train=True)
        total += jnp.sum(jax.vmap(lambda lg: losses.cross_entropy(lg, labels))(logits))
        logs[f"{adversary}_train_acc"] = jnp.mean(jax.vmap(lambda lg: metrics.accuracy(lg, labels))(logits))
    return total, (logs, stats)


def _restart(nets, config, state, rng):
    """Every ``restart_every`` steps, adversary copy ``(step // restart_every) % K`` of each band starts afresh:
    new weights, new statistics, zeroed optimizer moments."""
    robust = config.privacy.robust
    copy = (state.step // robust.restart_every) % robust.adversaries
    due = (state.step > 0) & (state.step % robust.restart_every == 0)

    def pick(fresh, old):
        chosen = (jnp.arange(old.shape[0]) == copy).reshape((-1,) + (1,) * (old.ndim - 1))
        return jnp.where(chosen, fresh, old)

    def restarted(operand):
        params, batch_stats, opt_state = operand
        params, batch_stats = dict(params), dict(batch_stats)
        for k, name in enumerate(GROUPS["adversaries"]):
            fresh = nets.init(name, jax.random.fold_in(rng, k))
            params[name] = jax.tree.map(pick, fresh["params"], params[name])
            batch_stats[name] = jax.tree.map(pick, fresh["batch_stats"], batch_stats[name])
        opt_state = dict(opt_state)
        opt_state["adversaries"] = jax.tree.map(
            lambda leaf: pick(jnp.zeros_like(leaf), leaf) if leaf.ndim and leaf.shape[0] == robust.adversaries
            else leaf, opt_state["adversaries"])
        return params, batch_stats, opt_state

    return jax.lax.cond(due, restarted, lambda operand: operand, (state.params, state.batch_stats,
                                                                   state.opt_state))


def _make_step(nets, config, tx):
    inner = optimizer_for(config, config.train.robust_privacy)

    def step(state, batch, rng):
        params, batch_stats, opt_state = _restart(nets, config, state, jax.random.fold_in(rng, 1))
        params, batch_stats, opt_state = dict(params), dict(batch_stats), dict(opt_state)
        frames, _ = flatten_frames(to_float(batch["video"]))
        clips, length = batch["video"].shape[:2]
        # the frames of each clip the adversaries and controllers see in this step
        index = jax.random.randint(jax.random.fold_in(rng, 2), (clips, config.privacy.robust.adversary_frames), 0,
                                   length)

        own = {n: params[n] for n in GROUPS["enhancers"]}
        (loss, (logs, stats)), grads = jax.value_and_grad(
            lambda p: _enhancer_loss(nets, config, {**params, **p}, batch_stats, state.frozen, frames, batch, index),
            has_aux=True)(own)
        updates, opt_state["enhancers"] = inner.update(grads, opt_state["enhancers"], own)
        params.update(optax.apply_updates(own, updates))
        batch_stats.update(stats)

        # The adversaries learn identity from what the updated enhancers now output (deployed, eval mode).
        seen = _some_frames(frames, index)
        bands = [jax.lax.stop_gradient(nets.apply(enhancer, {"params": params[enhancer],
                                                             "batch_stats": batch_stats[enhancer]}, band))
                 for (enhancer, _, _), band in zip(BANDS, nets.bands(seen))]
        labels = jnp.repeat(batch["identity"], index.shape[1])
        own = {n: params[n] for n in GROUPS["adversaries"]}
        (adversary_loss, (adversary_logs, stats)), grads = jax.value_and_grad(
            lambda p: _adversary_loss(nets, p, batch_stats, bands, labels), has_aux=True)(own)
        updates, opt_state["adversaries"] = inner.update(grads, opt_state["adversaries"], own)
        params.update(optax.apply_updates(own, updates))
        batch_stats.update(stats)
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), {
            "loss": loss, "adversary_ce": adversary_loss, **logs, **adversary_logs}
    return step


# -- checkpoint selection on val: a held-out attacker trained from scratch at every evaluation


def ridge_identity_probe(features: np.ndarray, identity: np.ndarray, clip: np.ndarray, *,
                         regulariser: float = 1.0) -> float:
    """Accuracy of a ridge classifier that reads identity from ``features`` (N, D), fit on the frames of half of
    each person's clips (alternate clips in order) and scored on the frames of the other half."""
    fit = np.zeros(len(clip), bool)
    for person in np.unique(identity):
        clips = np.unique(clip[identity == person])
        fit |= np.isin(clip, clips[::2])
    return metrics.ridge_accuracy(features[fit], identity[fit], features[~fit], identity[~fit],
                                  regulariser=regulariser)


def _evaluate(ctx):
    nets = ctx.nets

    def counts(state, batch):
        frames = to_float(batch["video"])
        variables = {n: net_variables(state, n) for n in GROUPS["enhancers"]}
        g = WAVELET.apply(nets, variables, frames)
        flat = flatten_frames(g)[0]
        m = batch["mask"]
        labels = jnp.repeat(batch["expression"], frames.shape[1])
        frame_mask = jnp.repeat(m, frames.shape[1])
        pooled = jax.lax.reduce_window(g, 0.0, jax.lax.add, (1, 1, 2, 2, 1), (1, 1, 2, 2, 1)) / 4.0
        return {GATHER: {"features": pooled.reshape(g.shape[:2] + (-1,)), "identity": batch["identity"]},
                "c_fc_acc_on_g": metrics.correct_counts(nets.apply("c_fc", state.frozen["c_fc"], flat), labels,
                                                        frame_mask),
                "fidelity_l1": {"sum": jnp.sum(jnp.mean(jnp.abs(g - frames), axis=(1, 2, 3, 4)) * m),
                                "count": jnp.sum(m)}}
    evaluate = evaluator(ctx, counts, "val")

    def eval_fn(state) -> dict:
        result = evaluate(state)
        gathered = result.pop(GATHER)
        features, identity = gathered["features"], gathered["identity"]
        frames_per_clip = features.shape[1]
        result["held_out_attacker_acc"] = ridge_identity_probe(
            features.reshape(-1, features.shape[-1]), np.repeat(identity, frames_per_clip),
            np.repeat(np.arange(len(identity)), frames_per_clip))
        result["selection"] = result["c_fc_acc_on_g"] - result["held_out_attacker_acc"]
        return result
    return eval_fn


def robust_privacy_stage(name: str, *, start: str) -> Stage:
    """Algorithm 1 made robust: the band enhancers (started from stage ``start``) and their co-trained adversaries
    in one alternating step; the checkpoint is chosen by the held-out ridge attacker."""
    return Stage(name, "robust_privacy", GROUPS["enhancers"] + GROUPS["adversaries"], ("c_low", "c_high", "c_fc"),
                 "train", None, _make_step, _evaluate, select=("selection", "max"),
                 init_from={n: start for n in GROUPS["enhancers"]}, optimizer=grouped_optimizer(GROUPS))
