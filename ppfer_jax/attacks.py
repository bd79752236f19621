"""The threat model (paper section 4.5, Table 3): a recovery attacker per method.

A white-box attacker holds a method's anonymised training clips and the original ones (everything but the
controllers, which are not deployed) and trains a U-Net (``config.model.recovery``; paper: a full-scale
U-Net) with L1 to map anonymised frames back to the originals. On the test split the evaluation reports
SSIM and PSNR between recovered and original frames and V_pl's PLR on the recovered frames
(``evaluation.evaluate_method``); lower is better for the method.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from ppfer_jax import losses
from ppfer_jax.methods.ppfer import Stage, flatten_frames, make_step, net_variables, pick_frames, to_float


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
        return {"l1": {"correct": jnp.sum(error * m), "total": jnp.sum(m)}}
    return ctx.evaluator(counts, "val", method, originals=True)


def recovery_stage(name: str, method: str) -> Stage:
    """The recovery U-Net trained (L1) from ``method``'s anonymised training frames to the original frames."""
    return Stage(name, "recovery", ("recovery",), (), "train", method, make_step(_recovery_loss),
                 functools.partial(_recovery_eval, method=method), originals=True)


def recover(nets, variables: dict, frames: jnp.ndarray) -> jnp.ndarray:
    """The attacker's reconstruction of float frames (..., H, W, 3), clipped to the image range."""
    flat, lead = flatten_frames(frames)
    return jnp.clip(nets.apply("recovery", variables, flat), 0.0, 1.0).reshape(lead + flat.shape[1:])
