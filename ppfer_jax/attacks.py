"""Every attacker trained afresh on a method's anonymised clips: the adaptive frame and clip attackers (identity
from anonymised frames / whole clips; of the run's people, and of people no other stage sees) and the recovery
attacker of the threat model (paper section 4.5, Table 3).

The recovery attacker is white-box: it holds a method's anonymised training clips and the original ones
(everything but the controllers, which are not deployed) and trains a U-Net (``config.model.recovery``; paper: a
full-scale U-Net) with L1 to map anonymised frames back to the originals. The evaluation reports SSIM and PSNR
between recovered and original test frames and V_pl's PLR on the recovered frames (``evaluation.evaluate_method``);
lower is better for the method.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from data_pipelines.sources import OPEN_SET_FIT
from ppfer_jax import losses
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import flatten_frames, pick_frames, to_float
from ppfer_jax.stage import Stage, make_step, net_variables
from ppfer_jax.stages.classifiers import clip_classifier_stage, frame_classifier_stage


def adaptive_attack_stage(name: str, method: str) -> Stage:
    """A fresh identity classifier (V_pl's architecture) trained on a method's anonymised training frames."""
    return frame_classifier_stage(name, "adaptive_attack", "attacker", "identity", "adaptive_plr", method=method)


def clip_attack_stage(name: str, method: str | None) -> Stage:
    """A fresh clip classifier (F_u's R3D) trained on identity from a method's anonymised training clips (None:
    the raw clips): the adaptive attacker that sees every frame of a clip (``train.clip_attack``)."""
    return clip_classifier_stage(name, "clip_attack", "clip_attacker", "identity", method)


def openset_attack_stages(prefix: str, method: str | None) -> tuple[Stage, Stage]:
    """The frame and clip attackers of people no other stage sees (``openset_attacker``, ``openset_clip_attacker``):
    trained from scratch on the first half of each such person's clips, raw or anonymised by ``method``, and
    monitored on that half (the second half is the evaluation's; no checkpoint is chosen)."""
    halves = dict(split=OPEN_SET_FIT, eval_split=OPEN_SET_FIT)
    return (frame_classifier_stage(f"{prefix}/attack_adaptive", "openset_attack", "openset_attacker", "identity",
                                   "adaptive_plr", method=method, **halves),
            clip_classifier_stage(f"{prefix}/attack_clip", "openset_clip_attack", "openset_clip_attacker",
                                  "identity", method, **halves))


def _recovery_loss(nets, config):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        anonymised, _ = flatten_frames(to_float(batch["video"]))
        original, _ = flatten_frames(to_float(batch["original"]))
        recovered, stats = nets.apply_train("recovery", params["recovery"], batch_stats["recovery"], anonymised)
        l1 = losses.l1(recovered, original)
        return l1, ({"l1": l1}, {"recovery": stats})
    return loss_fn


def _recovery_eval(ctx, *, method: str):
    def counts(state, batch):
        pick = functools.partial(pick_frames, index=batch["eval_frame"])
        recovered = ctx.nets.apply("recovery", net_variables(state, "recovery"), pick(to_float(batch["video"])))
        error = jnp.mean(jnp.abs(recovered - pick(to_float(batch["original"]))), axis=(1, 2, 3))
        m = batch["mask"].astype(jnp.float32)
        return {"l1": {"sum": jnp.sum(error * m), "count": jnp.sum(m)}}
    return evaluator(ctx, counts, "val", method, originals=True)


def recovery_stage(name: str, method: str) -> Stage:
    """The recovery U-Net trained (L1) from ``method``'s anonymised training frames to the original frames."""
    return Stage(name, "recovery", ("recovery",), (), "train", method, make_step(_recovery_loss),
                 functools.partial(_recovery_eval, method=method), originals=True)
