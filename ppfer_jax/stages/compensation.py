"""Algorithm 2 (s2/compensation): the compensator F_fc restores on G what the frozen expression controller reads.

F_fc (a U-ViT; G + U-ViT(G) when ``compensation.residual``) sees the frozen enhancers' privacy-preserved frames G
and minimises C_fc's expression cross-entropy on its output C. Without its controller (ablation Task 4) it
minimises the squared error to the original frames instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ppfer_jax import losses, metrics
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import Privatizer, flatten_frames, pick_frames, to_float
from ppfer_jax.stage import Stage, make_step, net_variables


def _compensation_loss(nets, config, privatizer: Privatizer, controlled: bool):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frames = to_float(batch["video"])
        labels = jnp.repeat(batch["expression"], frames.shape[1])
        g = jax.lax.stop_gradient(privatizer.apply(nets, frozen, frames))
        c = nets.compensate({"params": params["f_fc"]}, g)
        logits = nets.apply("c_fc", frozen["c_fc"], flatten_frames(c)[0])
        logs = {"c_fc_acc": metrics.accuracy(logits, labels)}
        if controlled:
            return losses.cross_entropy(logits, labels), (logs, batch_stats)
        mse = jnp.mean(jnp.square(c - frames))
        return mse, ({**logs, "mse": mse}, batch_stats)
    return loss_fn


def _compensation_eval(ctx, privatizer: Privatizer, method: str | None, leakage: bool):
    nets = ctx.nets

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        g = privatizer.apply(nets, state.frozen, frame)
        c = nets.compensate(net_variables(state, "f_fc"), g)
        m = batch["mask"]
        out = {"c_fc_acc_on_g": metrics.correct_counts(nets.apply("c_fc", state.frozen["c_fc"], g),
                                                       batch["expression"], m),
               "c_fc_acc_on_c": metrics.correct_counts(nets.apply("c_fc", state.frozen["c_fc"], c),
                                                       batch["expression"], m)}
        if leakage:
            out["leakage_on_c"] = metrics.correct_counts(nets.apply("v_pl", state.frozen["v_pl"], c),
                                                         batch["identity"], m)
        return out
    return evaluator(ctx, counts, "val", method)


def compensation_stage(name: str, privatizer: Privatizer, *, controlled: bool = True,
                       sources: dict | None = None, train_key: str = "compensation", method: str | None = None,
                       leakage: bool = True) -> Stage:
    """Algorithm 2: F_fc on the frozen enhancers' G, against C_fc (``controlled``) or by MSE (Task 4). ``method``:
    read that view of the clips (the open-set method's identity-free one); ``leakage``: also log V_pl on val C."""
    frozen = privatizer.enhancers + ("c_fc",) + (("v_pl",) if leakage else ())
    return Stage(name, train_key, ("f_fc",), frozen, "train", method,
                 make_step(functools.partial(_compensation_loss, privatizer=privatizer, controlled=controlled)),
                 functools.partial(_compensation_eval, privatizer=privatizer, method=method, leakage=leakage),
                 sources=sources or {})
