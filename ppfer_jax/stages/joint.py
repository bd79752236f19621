"""The ablations' "no identity controller": the enhancers and F_u trained as a whole on F_u's expression loss
(the paper's bi-optimisation, Figure 4's red arrows; Tasks 2 and 6)."""

from __future__ import annotations

import functools

from ppfer_jax import losses, metrics
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import Privatizer, flatten_frames, to_float
from ppfer_jax.stage import Stage, make_step, net_variables


def _joint_loss(nets, config, privatizer: Privatizer):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frames = to_float(batch["video"])
        flat, _ = flatten_frames(frames)
        outputs, new_stats = [], {}
        for name, x in zip(privatizer.enhancers, privatizer.inputs(nets, flat)):
            out, new_stats[name] = nets.apply_train(name, params[name], batch_stats[name], x)
            outputs.append(out)
        g = privatizer.combine(nets, outputs).reshape(frames.shape)
        logits, new_stats["f_u"] = nets.apply_train("f_u", params["f_u"], batch_stats["f_u"], g)
        return losses.cross_entropy(logits, batch["expression"]), (
            {"acc": metrics.accuracy(logits, batch["expression"])}, new_stats)
    return loss_fn


def _joint_eval(ctx, privatizer: Privatizer):
    def counts(state, batch):
        enhancers = {name: net_variables(state, name) for name in privatizer.enhancers}
        g = privatizer.apply(ctx.nets, enhancers, to_float(batch["video"]))
        logits = ctx.nets.apply("f_u", net_variables(state, "f_u"), g)
        return {"acc": metrics.correct_counts(logits, batch["expression"], batch["mask"])}
    return evaluator(ctx, counts, "val")


def joint_stage(name: str, privatizer: Privatizer, *, start: str) -> Stage:
    """The enhancers (started from stage ``start``) and F_u trained together on F_u's expression loss."""
    return Stage(name, "joint", privatizer.enhancers + ("f_u",), (), "train", None,
                 make_step(functools.partial(_joint_loss, privatizer=privatizer)),
                 functools.partial(_joint_eval, privatizer=privatizer),
                 init_from={n: start for n in privatizer.enhancers})
