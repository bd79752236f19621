"""Pretraining: the identity controllers and validators, the enhancers' identity-map start, the expression
controller."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from ppfer_jax import losses, metrics
from ppfer_jax.evaluation import evaluator
from ppfer_jax.nets import WAVELET, Privatizer, flatten_frames, pick_frames, random_frames, to_float
from ppfer_jax.stage import Stage, make_step, net_variables
from ppfer_jax.stages.classifiers import frame_classifier_stage

IDENTITY_READERS = ("c_low", "c_high", "v_pl", "v_sel")


# -- pretrain/identity: C_lpr and C_hpr on their band, V_pl and V_sel on frames, all on identity


def _identity_inputs(nets, frame):
    low, high = nets.bands(frame)
    return zip(IDENTITY_READERS, (low, high, frame, frame))


def _identity_loss(nets, config):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frame = random_frames(rng, to_float(batch["video"]))
        labels, total, logs, new_stats = batch["identity"], 0.0, {}, {}
        for name, x in _identity_inputs(nets, frame):
            logits, new_stats[name] = nets.apply_train(name, params[name], batch_stats[name], x)
            total += losses.cross_entropy(logits, labels)
            logs[f"{name}_acc"] = metrics.accuracy(logits, labels)
        return total, (logs, new_stats)
    return loss_fn


def _identity_eval(ctx):
    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        return {f"{name}_acc": metrics.correct_counts(ctx.nets.apply(name, net_variables(state, name), x),
                                                      batch["identity"], batch["mask"])
                for name, x in _identity_inputs(ctx.nets, frame)}
    return evaluator(ctx, counts, "val")


def identity_stage(name: str) -> Stage:
    """The band controllers and the two frame validators, each a ResNet on identity from scratch."""
    return Stage(name, "pretrain_identity", IDENTITY_READERS, (), "train", None, make_step(_identity_loss),
                 _identity_eval)


# -- the enhancers reconstruct their input (L1), as the paper initialises them (after SPAct)


def _enhancer_loss(nets, config, privatizer: Privatizer):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frames, _ = flatten_frames(to_float(batch["video"]))
        new_stats, logs, total = {}, {}, 0.0
        for name, band in zip(privatizer.enhancers, privatizer.inputs(nets, frames)):
            out, new_stats[name] = nets.apply_train(name, params[name], batch_stats[name], band)
            logs[f"{name}_l1"] = losses.l1(out, band)
            total += logs[f"{name}_l1"]
        return total, (logs, new_stats)
    return loss_fn


def _enhancer_eval(ctx, privatizer: Privatizer):
    nets = ctx.nets

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        m = batch["mask"].astype(jnp.float32)
        out = {}
        for name, band in zip(privatizer.enhancers, privatizer.inputs(nets, frame)):
            err = jnp.mean(jnp.abs(nets.apply(name, net_variables(state, name), band) - band), axis=(1, 2, 3))
            out[f"{name}_l1"] = {"sum": jnp.sum(err * m), "count": jnp.sum(m)}
        return out
    return evaluator(ctx, counts, "val")


def enhancer_pretrain_stage(name: str, train_key: str, privatizer: Privatizer = WAVELET) -> Stage:
    """The privatizer's enhancers learn to reconstruct their input (L1)."""
    return Stage(name, train_key, privatizer.enhancers, (), "train", None,
                 make_step(functools.partial(_enhancer_loss, privatizer=privatizer)),
                 functools.partial(_enhancer_eval, privatizer=privatizer))


def expression_controller_stage(name: str) -> Stage:
    """C_fc on one random frame per clip of the disjoint ``wild`` people (the paper's DFEW)."""
    return frame_classifier_stage(name, "pretrain_expression", "c_fc", "expression", "c_fc_acc_val_frames",
                                  split="wild")
