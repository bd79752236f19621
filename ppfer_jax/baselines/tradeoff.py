"""The trade-off framework baseline (paper Table 1 "Trade-off Framework": SPAct [16], after Wu et al. [57]).

An anonymiser U-Net on whole frames (``f_frame``, started from the L1-pretrained frame enhancer, as SPAct
starts from an identity-reconstructing anonymiser) is trained against a utility model (F_u's R3D) and an
identity adversary (V_pl's architecture) that are trained at the same time, with alternating updates in each
step:

1. anonymiser: minimise  utility CE + w * privacy loss of the adversary (``baselines.tradeoff.objective``;
   'entropy', SPAct's choice, maximises the adversary's predictive entropy; 'neg_ce' maximises its CE);
2. utility model and adversary, on the *updated* anonymiser's output: minimise utility CE + identity CE.

Both passes call one loss function (``_forward``). The two groups keep separate optimizer states, so an update
of one never moves the other through optimizer momentum. As for every row, F_u is then trained afresh on the
anonymised clips and the adaptive attacker on its frames.
"""

from __future__ import annotations

import jax

from ppfer_jax import losses, metrics
from ppfer_jax.anonymised import map_clips
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import flatten_frames, pick_frames, random_frames, to_float, to_uint8
from ppfer_jax.recipes.ablations import FRAME_ENHANCER
from ppfer_jax.stage import Stage, grouped_optimizer, net_variables, optimizer_for, update_group

GROUPS = {"anonymiser": ("f_frame",), "models": ("f_u", "adversary")}


def _forward(nets, params, batch_stats, batch, rng):
    """The shared loss function: (utility CE, the adversary's logits on one anonymised frame per clip, logs,
    new batch_stats), training mode."""
    frames = to_float(batch["video"])
    flat, _ = flatten_frames(frames)
    anonymised, s_a = nets.apply_train("f_frame", params["f_frame"], batch_stats["f_frame"], flat)
    anonymised = anonymised.reshape(frames.shape)
    logits_u, s_u = nets.apply_train("f_u", params["f_u"], batch_stats["f_u"], anonymised)
    logits_p, s_p = nets.apply_train("adversary", params["adversary"], batch_stats["adversary"],
                                     random_frames(rng, anonymised))
    utility = losses.cross_entropy(logits_u, batch["expression"])
    logs = {"utility_ce": utility, "acc": metrics.accuracy(logits_u, batch["expression"]),
            "adversary_acc": metrics.accuracy(logits_p, batch["identity"])}
    return utility, logits_p, logs, {"f_frame": s_a, "f_u": s_u, "adversary": s_p}


def _make_step(nets, config, tx):
    inner = optimizer_for(config, config.train.tradeoff)
    section = config.baselines.tradeoff

    def step(state, batch, rng):
        params, opt_state = dict(state.params), dict(state.opt_state)

        def anonymiser_loss(own):
            utility, logits_p, _, _ = _forward(nets, {**params, **own}, state.batch_stats, batch, rng)
            return utility + section.privacy_weight * losses.privacy_loss(logits_p, batch["identity"],
                                                                          section.objective)

        def models_loss(own):
            utility, logits_p, logs, stats = _forward(nets, {**params, **own}, state.batch_stats, batch, rng)
            identity = losses.cross_entropy(logits_p, batch["identity"])
            return utility + identity, ({**logs, "adversary_ce": identity}, stats)

        update_group(params, opt_state, "anonymiser", GROUPS["anonymiser"], anonymiser_loss, inner)
        loss, (logs, stats) = update_group(params, opt_state, "models", GROUPS["models"], models_loss, inner,
                                           has_aux=True)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=stats), {
            "loss": loss, **logs}
    return step


def _evaluate(ctx):
    def counts(state, batch):
        frames = to_float(batch["video"])
        flat, _ = flatten_frames(frames)
        anonymised = ctx.nets.apply("f_frame", net_variables(state, "f_frame"), flat).reshape(frames.shape)
        m = batch["mask"]
        return {"acc": metrics.correct_counts(ctx.nets.apply("f_u", net_variables(state, "f_u"), anonymised),
                                              batch["expression"], m),
                "adversary_acc": metrics.correct_counts(
                    ctx.nets.apply("adversary", net_variables(state, "adversary"),
                                   pick_frames(anonymised, batch["eval_frame"])), batch["identity"], m)}
    return evaluator(ctx, counts, "val")


TRADEOFF = Stage("tradeoff/train", "tradeoff", ("f_frame", "f_u", "adversary"), (), "train", None, _make_step,
                 _evaluate, init_from={"f_frame": FRAME_ENHANCER.name}, optimizer=grouped_optimizer(GROUPS))
STAGES = (FRAME_ENHANCER, TRADEOFF)


def anonymised_clips(ctx, split: str, method: str):
    """A split anonymised by the trained trade-off anonymiser."""
    variables = ctx.network("f_frame", TRADEOFF.name)

    def chain(video: jax.Array) -> jax.Array:
        frames = to_float(video)
        return to_uint8(ctx.nets.apply("f_frame", variables, flatten_frames(frames)[0]).reshape(frames.shape))
    return map_clips(ctx, ctx.source(split), chain)
