"""Classifiers trained from scratch on one label: a frame classifier on one random frame per clip (C_fc, the
adaptive frame attacker, the ablations' C_frame) and a clip classifier on every frame (F_u, the clip attacker)."""

from __future__ import annotations

import functools

from ppfer_jax import losses, metrics
from ppfer_jax.augment import flip_and_shift
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import pick_frames, random_frames, to_float
from ppfer_jax.stage import Stage, make_step, net_variables


def _frame_classifier_loss(nets, config, *, net: str, label: str):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frame = to_float(random_frames(rng, batch["video"]))  # convert one frame, not the clip
        logits, stats = nets.apply_train(net, params[net], batch_stats[net], frame)
        return losses.cross_entropy(logits, batch[label]), (
            {"acc": metrics.accuracy(logits, batch[label])}, {net: stats})
    return loss_fn


def _frame_classifier_eval(ctx, *, net: str, label: str, metric: str, method: str | None = None,
                           split: str = "val"):
    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        logits = ctx.nets.apply(net, net_variables(state, net), frame)
        return {metric: metrics.correct_counts(logits, batch[label], batch["mask"])}
    return evaluator(ctx, counts, split, method)


def frame_classifier_stage(name: str, train_key: str, net: str, label: str, metric: str, *, split: str = "train",
                           method: str | None = None, eval_split: str = "val") -> Stage:
    """A stage training ``net`` on one random frame per clip against ``label`` (cross-entropy), on the raw clips
    of ``split`` or on ``method``'s anonymised ones; monitored on ``eval_split``."""
    return Stage(name, train_key, (net,), (), split, method,
                 make_step(functools.partial(_frame_classifier_loss, net=net, label=label)),
                 functools.partial(_frame_classifier_eval, net=net, label=label, metric=metric, method=method,
                                   split=eval_split))


def _clip_classifier_loss(nets, config, *, net: str, label: str):
    """A clip classifier (R3D) on every frame of its (flipped, shifted) training clips."""
    aug = config.train.augment

    def loss_fn(params, batch_stats, frozen, batch, rng):
        video = flip_and_shift(rng, batch["video"], flip=aug.flip, max_shift=aug.max_shift)
        logits, stats = nets.apply_train(net, params[net], batch_stats[net], to_float(video))
        return losses.cross_entropy(logits, batch[label]), (
            {"acc": metrics.accuracy(logits, batch[label])}, {net: stats})
    return loss_fn


def clip_classifier_eval(ctx, *, method: str | None, net: str, label: str, split: str = "val"):
    """The clip classifier's accuracy on a split's clips (anonymised by ``method``; None: raw): state -> dict."""
    def counts(state, batch):
        logits = ctx.nets.apply(net, net_variables(state, net), to_float(batch["video"]))
        return {"acc": metrics.correct_counts(logits, batch[label], batch["mask"])}
    return evaluator(ctx, counts, split, method)


def clip_classifier_stage(name: str, train_key: str, net: str, label: str, method: str | None, *,
                          split: str = "train", eval_split: str = "val") -> Stage:
    """A stage training the clip classifier ``net`` against ``label`` on the raw clips of ``split`` (``method``
    None) or on a method's anonymised ones, with ``train.augment``; monitored on ``eval_split``."""
    part = dict(net=net, label=label)
    return Stage(name, train_key, (net,), (), split, method,
                 make_step(functools.partial(_clip_classifier_loss, **part)),
                 functools.partial(clip_classifier_eval, method=method, split=eval_split, **part), augmented=True)
