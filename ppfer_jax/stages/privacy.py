"""Algorithm 1 (s1/privacy): the privacy enhancers against their frozen identity controllers.

Each enhancer maps its input (a Haar band, or a whole frame in the ablations) so that its frozen controller
cannot read identity from it: the paper maximises the controller's cross-entropy (``privacy.objective``; bounded
alternatives in ``losses.privacy_loss``). The checkpoint is chosen on val by a second frozen validator, V_sel,
never by the V_pl the report names.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from ppfer_jax import losses, metrics
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import Privatizer, flatten_frames, pick_frames, to_float
from ppfer_jax.stage import Stage, make_step, net_variables


def _privacy_loss(nets, config, privatizer: Privatizer):
    objective = config.privacy.objective

    def loss_fn(params, batch_stats, frozen, batch, rng):
        frames, _ = flatten_frames(to_float(batch["video"]))
        labels = jnp.repeat(batch["identity"], batch["video"].shape[1])
        new_stats, logs, total = {}, {}, 0.0
        for name, ctrl, band in zip(privatizer.enhancers, privatizer.controllers, privatizer.inputs(nets, frames)):
            out, new_stats[name] = nets.apply_train(name, params[name], batch_stats[name], band)
            logits = nets.apply(ctrl, frozen[ctrl], out)
            total += losses.privacy_loss(logits, labels, objective)
            logs[f"{ctrl}_acc"] = metrics.accuracy(logits, labels)
            logs[f"{ctrl}_entropy"] = jnp.mean(losses.entropy(logits))
        return total, (logs, new_stats)
    return loss_fn


def _privacy_eval(ctx, privatizer: Privatizer):
    """Val numbers of Algorithm 1 and its checkpoint choice, ``selection`` (max): among the evaluations where the
    selection validator V_sel reads at most ``privacy.selection_target`` x chance from G, the one whose G is most
    like the frames (1 + SSIM); before any is, the least leaking one (minus V_sel's accuracy).

    V_sel is a second frozen frame validator, trained beside V_pl from another initialisation: the report's
    V_pl is logged (``leakage``) but never chooses. The band controllers cannot choose either: the enhancers fool
    them long before a frame validator does (benchmarks/RESULTS.md)."""
    nets = ctx.nets
    target = ctx.config.privacy.selection_target / ctx.config.data.num_identities

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        enhancers = {name: net_variables(state, name) for name in privatizer.enhancers}
        g = privatizer.apply(nets, enhancers, frame)
        m = batch["mask"]
        out = {"leakage": metrics.correct_counts(nets.apply("v_pl", state.frozen["v_pl"], g), batch["identity"], m),
               "v_sel_acc": metrics.correct_counts(nets.apply("v_sel", state.frozen["v_sel"], g), batch["identity"], m),
               "ssim_g": {"sum": jnp.sum(metrics.ssim(frame, g) * m), "count": jnp.sum(m.astype(jnp.float32))}}
        for name, ctrl, band in zip(privatizer.enhancers, privatizer.controllers, privatizer.inputs(nets, frame)):
            logits = nets.apply(ctrl, state.frozen[ctrl], nets.apply(name, enhancers[name], band))
            out[f"{ctrl}_acc"] = metrics.correct_counts(logits, batch["identity"], m)
        return out
    evaluate = evaluator(ctx, counts, "val")

    def eval_fn(state) -> dict:
        result = evaluate(state)
        leak = result["v_sel_acc"]
        result["selection"] = 1.0 + result["ssim_g"] if leak <= target else -leak
        return result
    return eval_fn


def privacy_stage(name: str, privatizer: Privatizer, *, start: str, sources: dict | None = None) -> Stage:
    """Algorithm 1: the enhancers (started from stage ``start``) against their frozen identity controllers; the
    checkpoint is chosen on val by ``_privacy_eval``'s rule."""
    return Stage(name, "privacy", privatizer.enhancers, privatizer.controllers + ("v_pl", "v_sel"), "train", None,
                 make_step(functools.partial(_privacy_loss, privatizer=privatizer)),
                 functools.partial(_privacy_eval, privatizer=privatizer), select=("selection", "max"),
                 init_from={n: start for n in privatizer.enhancers}, sources=sources or {})
