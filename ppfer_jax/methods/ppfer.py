"""The PPFER method as training stages: pretraining, Algorithm 1, Algorithm 2, utility, attacker.

Each stage is a ``Stage`` (name, the networks it trains, the frozen networks it
reads, a step builder, an eval builder). ``run_stage`` turns one into a
``training.fit`` call. Upstream networks are loaded from their producing stage's
best checkpoint (its latest when it selects none), stored in ``TrainState.frozen``
and applied on the fly inside the jitted step: nothing is written to disk between
stages and nothing frozen is ever an argument of ``grad``.

The stages downstream of the whole chain (the utility model and the adaptive
attacker) instead train on the *anonymised* split: every clip passed once through
F_fc(merge(F_lpr, F_hpr)) and stored in memory as uint8 video (``Context.source``
with ``anonymised="ppfer"``), which is what a deployment hands on. Their models run
hundreds of steps per epoch, so recomputing the frozen chain in every step would
cost more than training them. The baselines and ablations of ``ppfer-jax reproduce``
(``ppfer_jax/suite.py``) register their own anonymisation methods with the Context and
reuse these stage builders.

Network names (``NETS``): c_low / c_high (identity controllers on the low / high
wavelet band), v_pl (leakage validator on frames), v_sel (a second frozen frame
validator that chooses s1's checkpoint, so the reported V_pl never does), c_fc
(expression controller on frames), f_low / f_high (privacy enhancers, U-Net), f_fc
(compensator, U-ViT), f_u (utility R3D on clips), attacker / clip_attacker (fresh
identity classifiers, V_pl's and F_u's architectures, trained on anonymised frames /
clips: the adaptive attacks), adv_low / adv_high (ppfer_robust's co-trained band
adversaries, ``privacy.robust.adversaries`` stacked copies each); for the suite,
f_frame / c_frame (a whole-frame enhancer and its controller), adversary (the
trade-off baseline's) and recovery (the threat model's U-Net).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.multihost_utils import process_allgather

from data_pipelines.loader import MASK, RandomResizedCrop, iterate_once, make_iterator
from data_pipelines.sources import ArraySource, load_split
from ppfer_jax import losses, metrics, wavelets
from ppfer_jax.augment import flip_and_shift
from ppfer_jax.convert import load_variables
from ppfer_jax.models import build_model
from ppfer_jax.parallel import global_batch, process_batch_size, tree_shardings
from ppfer_jax.training import TrainState, abstract_state, fit, load_best

NETS = ("c_low", "c_high", "v_pl", "v_sel", "c_fc", "f_low", "f_high", "f_fc", "f_u", "attacker", "clip_attacker",
        "adv_low", "adv_high", "f_frame", "c_frame", "adversary", "recovery")
ANONYMISER = ("f_low", "f_high", "f_fc")  # the networks that make an anonymised split
IDENTITY_READERS = ("c_low", "c_high", "v_pl", "v_sel", "attacker", "clip_attacker", "adv_low", "adv_high", "c_frame",
                    "adversary")  # the networks that classify identity
STACKED = ("adv_low", "adv_high")  # ppfer_robust's co-trained band adversaries: privacy.robust.adversaries copies each
ROLES = {"c_low": "identity_controller", "c_high": "identity_controller", "v_pl": "validator", "v_sel": "validator",
         "attacker": "validator", "clip_attacker": "utility", "adv_low": "identity_controller",
         "adv_high": "identity_controller", "c_fc": "expression_controller", "f_low": "enhancer_low",
         "f_high": "enhancer_high", "f_fc": "compensator", "f_u": "utility",
         # the evaluation suite's (``ppfer-jax reproduce``): a frame enhancer and its controller (ablations without
         # the wavelet, the trade-off baseline's anonymiser), the trade-off's identity adversary, and the
         # recovery attacker of the threat model
         "f_frame": "enhancer_frame", "c_frame": "identity_controller", "adversary": "validator",
         "recovery": "recovery"}  # network -> config.model key


# ----------------------------------------------------------------------------------------------------------------
# Networks


@dataclasses.dataclass(frozen=True)
class Nets:
    """The flax modules of every role, built from the config, and the pure functions chaining them."""

    config: object

    def spec(self, name: str) -> dict:
        """The config's model spec of a network, ``init_from`` included."""
        return dict(self.config.model[ROLES[name]])

    @functools.cached_property
    def modules(self) -> dict:
        """The modules of the networks whose role ``config.model`` specifies (a bundle: the anonymiser's and F_u's
        only, with no identity count)."""
        c = self.config
        role_fields = {
            "f_frame": lambda: dict(out_channels=3),
            "recovery": lambda: dict(out_channels=3),
            "c_fc": lambda: dict(num_classes=c.data.num_expressions),
            "f_u": lambda: dict(num_classes=c.data.num_expressions),
            "f_low": lambda: dict(out_channels=3),
            "f_high": lambda: dict(out_channels=3 * wavelets.num_high_bands(c.wavelet.spatiotemporal)),
            "f_fc": lambda: dict(img_size=c.data.image_size, in_channels=3)}
        if c.data.get("num_identities"):
            role_fields.update({name: lambda: dict(num_classes=c.data.num_identities) for name in IDENTITY_READERS})
        return {name: build_model(self.spec(name), dtype=c.dtype, **fields())
                for name, fields in role_fields.items() if ROLES[name] in c.model}

    def pretrained(self, name: str) -> dict | None:
        """Variables from the network's ``init_from`` directory (``ppfer-jax convert`` output), else None."""
        directory = self.spec(name).get("init_from")
        if not directory:
            return None
        target = jax.eval_shape(lambda: self.init(name, jax.random.key(0, impl=self.config.rng_impl)))
        return load_variables(Path(directory).expanduser(), target)

    def dummy_input(self, name: str) -> jax.Array:
        d = self.config.data
        half = d.image_size // 2
        high_channels = 3 * wavelets.num_high_bands(self.config.wavelet.spatiotemporal)
        clip = (1, d.num_frames, d.image_size, d.image_size, 3)
        shapes = {"c_low": (1, half, half, 3), "f_low": (1, half, half, 3), "adv_low": (1, half, half, 3),
                  "c_high": (1, half, half, high_channels), "f_high": (1, half, half, high_channels),
                  "adv_high": (1, half, half, high_channels), "f_u": clip, "clip_attacker": clip}
        return jnp.zeros(shapes.get(name, (1, d.image_size, d.image_size, 3)), jnp.float32)

    def init(self, name: str, key: jax.Array) -> dict:
        """Fresh variables {'params', 'batch_stats'} of one network (of every copy, stacked, for ``STACKED``)."""
        if name in STACKED:
            copies = self.config.privacy.robust.adversaries
            return jax.vmap(lambda k: self._init_one(name, k))(jax.random.split(key, copies))
        return self._init_one(name, key)

    def _init_one(self, name: str, key: jax.Array) -> dict:
        variables = dict(self.modules[name].init(key, self.dummy_input(name), train=False))
        variables.setdefault("batch_stats", {})
        if name == "f_fc" and self.config.compensation.residual:
            variables["params"] = _zero_last_layer(variables["params"])
        return {"params": variables["params"], "batch_stats": variables["batch_stats"]}

    # -- forward passes (eval mode unless said otherwise)

    def apply(self, name: str, variables: dict, x: jax.Array) -> jax.Array:
        return self.modules[name].apply(_vars(variables), x, train=False)

    def apply_train(self, name: str, params, batch_stats, x: jax.Array):
        """Training-mode forward: (output, new batch_stats)."""
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
            out, updates = self.modules[name].apply(variables, x, train=True, mutable=["batch_stats"])
            return out, updates["batch_stats"]
        return self.modules[name].apply(variables, x, train=True), batch_stats

    def split(self, frames: jax.Array):
        w = self.config.wavelet
        return wavelets.split(frames, wavelet=w.name, mode=w.mode, spatiotemporal=False)

    def merge(self, low: jax.Array, high: jax.Array) -> jax.Array:
        return wavelets.merge(low, high, wavelet=self.config.wavelet.name, spatiotemporal=False)

    def privatize(self, frozen: dict, frames: jax.Array) -> jax.Array:
        """G = merge(F_lpr(low), F_hpr(high)) of float frames (..., H, W, 3), frame by frame."""
        return WAVELET.apply(self, frozen, frames)

    def compensate(self, variables: dict, g: jax.Array) -> jax.Array:
        """C = F_fc(G) frame by frame (G + U-ViT(G) when compensation.residual)."""
        flat, lead = flatten_frames(g)
        out = self.apply("f_fc", variables, flat)
        out = flat + out if self.config.compensation.residual else out
        return out.reshape(lead + out.shape[1:])


@dataclasses.dataclass(frozen=True)
class Privatizer:
    """How privacy enhancers meet the frames: one per Haar band, merged back (the paper), or one on whole frames
    (the ablations without the wavelet transform, Tasks 1-3). ``controllers[i]`` is ``enhancers[i]``'s."""

    enhancers: tuple[str, ...]
    controllers: tuple[str, ...]
    wavelet: bool

    def inputs(self, nets: Nets, frames: jax.Array) -> tuple[jax.Array, ...]:
        """The enhancers' inputs from float frames (N, H, W, 3)."""
        return nets.split(frames) if self.wavelet else (frames,)

    def combine(self, nets: Nets, outputs) -> jax.Array:
        """Privacy-preserved frames G from the enhancers' outputs."""
        return nets.merge(*outputs) if self.wavelet else outputs[0]

    def apply(self, nets: Nets, variables: dict, frames: jax.Array) -> jax.Array:
        """G of float frames (..., H, W, 3), every enhancer frozen."""
        flat, lead = flatten_frames(frames)
        outputs = [nets.apply(name, variables[name], x) for name, x in zip(self.enhancers, self.inputs(nets, flat))]
        g = self.combine(nets, outputs)
        return g.reshape(lead + g.shape[1:])


WAVELET = Privatizer(("f_low", "f_high"), ("c_low", "c_high"), wavelet=True)
FRAMES = Privatizer(("f_frame",), ("c_frame",), wavelet=False)


def _vars(variables: dict) -> dict:
    return {k: v for k, v in variables.items() if k == "params" or v}


def flatten_frames(x: jax.Array):
    return x.reshape((-1,) + x.shape[-3:]), x.shape[:-3]


def _zero_last_layer(params: dict) -> dict:
    """U-ViT with its output layer zeroed: the residual compensator starts as the identity map."""
    last = "final_layer" if "final_layer" in params else "decoder_pred"
    return {**params, last: jax.tree.map(jnp.zeros_like, params[last])}


def to_float(video: jax.Array) -> jax.Array:
    return video.astype(jnp.float32) / 255.0


def to_uint8(frames: jax.Array) -> jax.Array:
    """Float frames in [0, 1] (clipped) to uint8 video, rounding: what a video file would hold."""
    return jnp.round(jnp.clip(frames, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def pick_frames(video: jax.Array, index: jax.Array) -> jax.Array:
    """video (B, T, ...) and one frame index per clip (B,) -> (B, ...)."""
    return jnp.take_along_axis(video, index.reshape((-1,) + (1,) * (video.ndim - 1)), axis=1)[:, 0]


def random_frames(rng: jax.Array, video: jax.Array) -> jax.Array:
    return pick_frames(video, jax.random.randint(rng, (video.shape[0],), 0, video.shape[1]))


# ----------------------------------------------------------------------------------------------------------------
# Stages


@dataclasses.dataclass(frozen=True)
class Stage:
    """One trained stage: its networks, the frozen ones it reads, and where each trained one starts from."""

    name: str
    train_key: str                 # section of config.train
    trains: tuple[str, ...]
    frozen: tuple[str, ...]
    split: str                     # training split
    anonymised: str | None         # train and evaluate on this method's anonymised split (None: the raw clips)
    step: Callable                 # (nets, config, tx) -> step_fn
    evaluate: Callable             # (ctx) -> eval_fn(state) -> dict
    select: tuple[str, str] | None = None
    augmented: bool = False        # training clips get config.train.augment (flips, shifts, resized crops)
    init_from: dict = dataclasses.field(default_factory=dict)  # trained net -> stage whose weights start it
    sources: dict = dataclasses.field(default_factory=dict)    # frozen net -> the stage it is loaded from, where
    #                                                            that is not its ``producer``
    originals: bool = False        # batches also hold the raw clips as ``original`` (the recovery attack)
    optimizer: Callable | None = None  # (config, section) -> optax transform; None: ``stage_optimizer``'s default

    def source_of(self, name: str) -> str:
        """The stage a frozen network of this stage is loaded from."""
        return self.sources.get(name) or producer(name)


def producer(name: str) -> str:
    """The stage whose weights a frozen network is loaded from."""
    return {"c_low": "pretrain/identity", "c_high": "pretrain/identity", "v_pl": "pretrain/identity",
            "v_sel": "pretrain/identity",
            "c_fc": "pretrain/expression", "f_low": "s1/privacy", "f_high": "s1/privacy",
            "f_fc": "s2/compensation", "f_u": "s3/utility", "attacker": "attack/adaptive"}[name]


OPTIMIZERS = {"adam": optax.adam, "sgd": lambda rate: optax.sgd(rate, momentum=0.9)}


def stage_optimizer(config, stage: Stage) -> optax.GradientTransformation:
    """The stage's optimizer: its own builder's, else the configured one at its section's schedule."""
    section = config.train[stage.train_key]
    return (stage.optimizer or optimizer_for)(config, section)


def optimizer_for(config, section) -> optax.GradientTransformation:
    """The stage's optimizer (Adam, or SGD with momentum 0.9) at its learning rate: constant, or a linear warm-up
    (a tenth of the steps) then cosine decay."""
    if config.train.optimizer not in OPTIMIZERS:
        raise ValueError(f"config train.optimizer: expected one of {', '.join(OPTIMIZERS)}, "
                         f"got {config.train.optimizer!r}")
    schedule = section.get("schedule") or "constant"
    if schedule == "constant":
        return OPTIMIZERS[config.train.optimizer](section.learning_rate)
    if schedule == "cosine":
        return OPTIMIZERS[config.train.optimizer](optax.warmup_cosine_decay_schedule(
            0.0, section.learning_rate, warmup_steps=max(1, section.steps // 10), decay_steps=section.steps))
    raise ValueError(f"config train.*.schedule: expected 'constant' or 'cosine', got {schedule!r}")


def grouped_optimizer(groups: dict[str, tuple[str, ...]]) -> Callable:
    """An optimizer builder ``(config, section) -> transform`` keeping one state per group of networks, for steps
    that update the groups in turn (adversarial games): an update of one group never moves another through
    optimizer momentum."""
    def build(config, section) -> optax.GradientTransformation:
        inner = optimizer_for(config, section)

        def init(params):
            return {group: inner.init({n: params[n] for n in names}) for group, names in groups.items()}

        def update(grads, state, params=None):
            updates, new_state = {}, {}
            for group, names in groups.items():
                part, new_state[group] = inner.update({n: grads[n] for n in names}, state[group],
                                                      None if params is None else {n: params[n] for n in names})
                updates.update(part)
            return updates, new_state
        return optax.GradientTransformation(init, update)
    return build


def make_step(loss_fn):
    """A step builder from a loss builder: ``loss_fn(nets, config)(params, batch_stats, frozen, batch, rng)``
    returns (loss, (metrics, new_batch_stats)). Only ``params`` (the trained networks) is differentiated;
    ``frozen`` is read, never an argument of grad."""

    def make(nets, config, tx):
        def step(state, batch, rng):
            (loss, (logs, batch_stats)), grads = jax.value_and_grad(loss_fn(nets, config), has_aux=True)(
                state.params, state.batch_stats, state.frozen, batch, rng)
            return state.apply_gradients(grads=grads, tx=tx, batch_stats=batch_stats), {"loss": loss, **logs}
        return step
    return make


# -- pretrain/identity: C_lpr, C_hpr, V_pl on identity


def _identity_loss(nets, config):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frame = random_frames(rng, to_float(batch["video"]))
        low, high = nets.split(frame)
        labels, total, logs, new_stats = batch["identity"], 0.0, {}, {}
        for name, x in (("c_low", low), ("c_high", high), ("v_pl", frame), ("v_sel", frame)):
            logits, new_stats[name] = nets.apply_train(name, params[name], batch_stats[name], x)
            loss = losses.cross_entropy(logits, labels)
            total += loss
            logs[f"{name}_acc"] = metrics.accuracy(logits, labels)
        return total, (logs, new_stats)
    return loss_fn


def _identity_eval(ctx):
    nets = ctx.nets

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        low, high = nets.split(frame)
        out = {}
        for name, x in (("c_low", low), ("c_high", high), ("v_pl", frame), ("v_sel", frame)):
            logits = nets.apply(name, net_variables(state, name), x)
            out[f"{name}_acc"] = metrics.correct_counts(logits, batch["identity"], batch["mask"])
        return out
    return ctx.evaluator(counts, "val")


# -- pretrain/enhancer: U-Nets reconstruct their band (L1)


def _enhancer_loss(nets, config, privatizer: Privatizer = WAVELET):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frames, _ = flatten_frames(to_float(batch["video"]))
        new_stats, logs, total = {}, {}, 0.0
        for name, band in zip(privatizer.enhancers, privatizer.inputs(nets, frames)):
            out, new_stats[name] = nets.apply_train(name, params[name], batch_stats[name], band)
            logs[f"{name}_l1"] = losses.l1(out, band)
            total += logs[f"{name}_l1"]
        return total, (logs, new_stats)
    return loss_fn


def _enhancer_eval(ctx, privatizer: Privatizer = WAVELET):
    nets = ctx.nets

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        m = batch["mask"].astype(jnp.float32)
        out = {}
        for name, band in zip(privatizer.enhancers, privatizer.inputs(nets, frame)):
            err = jnp.mean(jnp.abs(nets.apply(name, net_variables(state, name), band) - band), axis=(1, 2, 3))
            out[f"{name}_l1"] = {"correct": jnp.sum(err * m), "total": jnp.sum(m)}
        return out
    return ctx.evaluator(counts, "val")


# -- one frame classifier on one random frame per clip: C_fc (pretrain/expression, on the disjoint 'wild'
#    people), the adaptive attacker (attack/adaptive, on anonymised training clips), C_frame (the ablations)


def _frame_classifier_loss(nets, config, *, net: str, label: str):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frame = to_float(random_frames(rng, batch["video"]))  # convert one frame, not the clip
        logits, stats = nets.apply_train(net, params[net], batch_stats[net], frame)
        return losses.cross_entropy(logits, batch[label]), (
            {"acc": metrics.accuracy(logits, batch[label])}, {net: stats})
    return loss_fn


def _frame_classifier_eval(ctx, *, net: str, label: str, metric: str, anonymised: str | None = None):
    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        logits = ctx.nets.apply(net, net_variables(state, net), frame)
        return {metric: metrics.correct_counts(logits, batch[label], batch["mask"])}
    return ctx.evaluator(counts, "val", anonymised)


def frame_classifier_stage(name: str, train_key: str, net: str, label: str, metric: str, *, split: str = "train",
                           anonymised: str | None = None) -> Stage:
    """A stage training ``net`` on one random frame per clip against ``label`` (cross-entropy)."""
    return Stage(name, train_key, (net,), (), split, anonymised,
                 make_step(functools.partial(_frame_classifier_loss, net=net, label=label)),
                 functools.partial(_frame_classifier_eval, net=net, label=label, metric=metric,
                                   anonymised=anonymised))


# -- s1/privacy (Algorithm 1): enhancers against frozen band controllers


def _privacy_loss(nets, config, privatizer: Privatizer = WAVELET):
    objective = config.privacy.objective

    def loss_fn(params, batch_stats, frozen, batch, rng):
        frames, _ = flatten_frames(to_float(batch["video"]))
        labels = jnp.repeat(batch["identity"], batch["video"].shape[1])
        new_stats, logs, total = {}, {}, 0.0
        for name, ctrl, band in zip(privatizer.enhancers, privatizer.controllers, privatizer.inputs(nets, frames)):
            out, new_stats[name] = nets.apply_train(name, params[name], batch_stats[name], band)
            logits = nets.apply(ctrl, frozen[ctrl], out)
            loss = losses.privacy_loss(logits, labels, objective)
            total += loss
            logs[f"{ctrl}_acc"] = metrics.accuracy(logits, labels)
            logs[f"{ctrl}_entropy"] = jnp.mean(losses.entropy(logits))
        return total, (logs, new_stats)
    return loss_fn


def _privacy_eval(ctx, privatizer: Privatizer = WAVELET):
    """Val numbers of Algorithm 1 and its checkpoint choice, ``selection`` (max): among the evaluations where the
    selection validator V_sel reads at most ``privacy.selection_target`` x chance from G, the one whose G is most
    like the frames (1 + SSIM); before any is, the least leaking one (minus V_sel's accuracy).

    V_sel is a second frozen frame validator, trained beside V_pl from another initialisation: the report's
    V_pl is logged (``leakage``) but never chooses. The band controllers cannot choose either: the enhancers fool
    them long before a frame validator (measured: both at 2x chance by step 125, V_pl still at 31%)."""
    nets = ctx.nets
    target = ctx.config.privacy.selection_target / ctx.config.data.num_identities

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        enhancers = {name: net_variables(state, name) for name in privatizer.enhancers}
        g = privatizer.apply(nets, enhancers, frame)
        m = batch["mask"]
        out = {"leakage": metrics.correct_counts(nets.apply("v_pl", state.frozen["v_pl"], g), batch["identity"], m),
               "v_sel_acc": metrics.correct_counts(nets.apply("v_sel", state.frozen["v_sel"], g), batch["identity"], m),
               "ssim_g": {"correct": jnp.sum(metrics.ssim(frame, g) * m), "total": jnp.sum(m.astype(jnp.float32))}}
        for name, ctrl, band in zip(privatizer.enhancers, privatizer.controllers, privatizer.inputs(nets, frame)):
            logits = nets.apply(ctrl, state.frozen[ctrl], nets.apply(name, enhancers[name], band))
            out[f"{ctrl}_acc"] = metrics.correct_counts(logits, batch["identity"], m)
        return out
    evaluate = ctx.evaluator(counts, "val")

    def eval_fn(state) -> dict:
        result = evaluate(state)
        leak = result["v_sel_acc"]
        result["selection"] = 1.0 + result["ssim_g"] if leak <= target else -leak
        return result
    return eval_fn


# -- s2/compensation (Algorithm 2): U-ViT against the frozen expression controller


def _compensation_loss(nets, config, privatizer: Privatizer = WAVELET, controlled: bool = True):
    """Algorithm 2: F_fc minimises C_fc's expression CE on C (``controlled``), or, without its controller
    (ablation Task 4), the mean squared error between C and the original frames."""
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


def _compensation_eval(ctx, privatizer: Privatizer = WAVELET):
    nets = ctx.nets

    def counts(state, batch):
        frame = pick_frames(to_float(batch["video"]), batch["eval_frame"])
        g = privatizer.apply(nets, state.frozen, frame)
        c = nets.compensate(net_variables(state, "f_fc"), g)
        m = batch["mask"]
        return {"c_fc_acc_on_g": metrics.correct_counts(nets.apply("c_fc", state.frozen["c_fc"], g),
                                                        batch["expression"], m),
                "c_fc_acc_on_c": metrics.correct_counts(nets.apply("c_fc", state.frozen["c_fc"], c),
                                                        batch["expression"], m),
                "leakage_on_c": metrics.correct_counts(nets.apply("v_pl", state.frozen["v_pl"], c),
                                                       batch["identity"], m)}
    return ctx.evaluator(counts, "val")


# -- s3/utility and no_privacy: R3D on anonymised / raw clips


def compensated_clips(nets, frozen, video, privatizer: Privatizer = WAVELET):
    """C = F_fc(merge(F_lpr(low), F_hpr(high))) of uint8 clips, all upstream frozen."""
    return nets.compensate(frozen["f_fc"], privatizer.apply(nets, frozen, to_float(video)))


def _clip_classifier_loss(nets, config, *, net: str = "f_u", label: str = "expression"):
    """A clip classifier (R3D) on every frame of its (flipped, shifted) training clips: F_u on expression, the
    clip attacker on identity."""
    aug = config.train.augment

    def loss_fn(params, batch_stats, frozen, batch, rng):
        video = flip_and_shift(rng, batch["video"], flip=aug.flip, max_shift=aug.max_shift)
        logits, stats = nets.apply_train(net, params[net], batch_stats[net], to_float(video))
        return losses.cross_entropy(logits, batch[label]), (
            {"acc": metrics.accuracy(logits, batch[label])}, {net: stats})
    return loss_fn


def _clip_classifier_eval(ctx, *, anonymised: str | None, net: str = "f_u", label: str = "expression"):
    def counts(state, batch):
        logits = ctx.nets.apply(net, net_variables(state, net), to_float(batch["video"]))
        return {"acc": metrics.correct_counts(logits, batch[label], batch["mask"])}
    return ctx.evaluator(counts, "val", anonymised)


def net_variables(state: TrainState, name: str) -> dict:
    return {"params": state.params[name], "batch_stats": state.batch_stats[name]}


def utility_stage(name: str, method: str | None) -> Stage:
    """F_u trained on a method's anonymised clips (``train.utility``), or on the raw clips (``train.no_privacy``)."""
    return Stage(name, "no_privacy" if method is None else "utility", ("f_u",), (), "train", method,
                 make_step(_clip_classifier_loss), functools.partial(_clip_classifier_eval, anonymised=method),
                 augmented=True)


def clip_attack_stage(name: str, method: str | None) -> Stage:
    """A fresh clip classifier (F_u's R3D) trained on identity from a method's anonymised training clips (None:
    the raw clips): the adaptive attacker that sees every frame of a clip (``train.clip_attack``)."""
    part = dict(net="clip_attacker", label="identity")
    return Stage(name, "clip_attack", ("clip_attacker",), (), "train", method,
                 make_step(functools.partial(_clip_classifier_loss, **part)),
                 functools.partial(_clip_classifier_eval, anonymised=method, **part), augmented=True)


def adaptive_attack_stage(name: str, method: str) -> Stage:
    """A fresh identity classifier trained on a method's anonymised training frames: the adaptive attack."""
    return frame_classifier_stage(name, "adaptive_attack", "attacker", "identity", "adaptive_plr",
                                  anonymised=method)


def enhancer_pretrain_stage(name: str, train_key: str, privatizer: Privatizer) -> Stage:
    """The enhancers learn to reconstruct their input (L1), as the paper initialises them (after SPAct)."""
    return Stage(name, train_key, privatizer.enhancers, (), "train", None,
                 make_step(functools.partial(_enhancer_loss, privatizer=privatizer)),
                 functools.partial(_enhancer_eval, privatizer=privatizer))


def privacy_stage(name: str, privatizer: Privatizer, *, start: str, sources: dict | None = None) -> Stage:
    """Algorithm 1: the enhancers (started from stage ``start``) against their frozen identity controllers; the
    checkpoint is chosen on val by ``_privacy_eval``'s rule."""
    return Stage(name, "privacy", privatizer.enhancers, privatizer.controllers + ("v_pl", "v_sel"), "train", None,
                 make_step(functools.partial(_privacy_loss, privatizer=privatizer)),
                 functools.partial(_privacy_eval, privatizer=privatizer), select=("selection", "max"),
                 init_from={n: start for n in privatizer.enhancers}, sources=sources or {})


def compensation_stage(name: str, privatizer: Privatizer, *, controlled: bool = True,
                       sources: dict | None = None) -> Stage:
    """Algorithm 2: F_fc on the frozen enhancers' G, against C_fc (``controlled``) or by MSE (Task 4)."""
    return Stage(name, "compensation", ("f_fc",), privatizer.enhancers + ("c_fc", "v_pl"), "train", None,
                 make_step(functools.partial(_compensation_loss, privatizer=privatizer, controlled=controlled)),
                 functools.partial(_compensation_eval, privatizer=privatizer), sources=sources or {})


STAGES = (
    Stage("pretrain/identity", "pretrain_identity", ("c_low", "c_high", "v_pl", "v_sel"), (), "train", None,
          make_step(_identity_loss), _identity_eval),
    enhancer_pretrain_stage("pretrain/enhancer", "pretrain_enhancer", WAVELET),
    frame_classifier_stage("pretrain/expression", "pretrain_expression", "c_fc", "expression", "c_fc_acc_val_frames",
                           split="wild"),
    privacy_stage("s1/privacy", WAVELET, start="pretrain/enhancer"),
    compensation_stage("s2/compensation", WAVELET),
    utility_stage("s3/utility", "ppfer"),
    utility_stage("no_privacy", None),
    adaptive_attack_stage("attack/adaptive", "ppfer"),
    clip_attack_stage("attack/clip", "ppfer"),
    clip_attack_stage("attack/clip_raw", None),
)
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}
ANONYMISER_STAGES = {name: producer(name) for name in ANONYMISER}  # the stage each anonymiser network comes from


def stage_key(config, name: str) -> jax.Array:
    """The stage's root key: the config seed folded with a stable hash of the stage name."""
    return jax.random.fold_in(jax.random.key(config.seed, impl=config.rng_impl), zlib.crc32(name.encode()))


def stage_seed(config, name: str) -> int:
    """The stage's data-order seed (grain), derived the same way."""
    return (config.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


# ----------------------------------------------------------------------------------------------------------------
# Running a stage


def ppfer_split(ctx: Context, split: str, method: str) -> ArraySource:
    """The split anonymised by a trained PPFER chain C = F_fc(merge(F_lpr(low), F_hpr(high))): the paper's
    (``ppfer``) or the robust one (``ppfer_robust``)."""
    from ppfer_jax.methods.registry import ANONYMISER_STAGES

    frozen = {n: ctx.network(n, stage) for n, stage in ANONYMISER_STAGES[method].items()}
    return ctx.map_clips(load_split(ctx.config, split), lambda video: to_uint8(compensated_clips(ctx.nets, frozen,
                                                                                                 video)))


class Context:
    """What stages share in one run: config, workdir, mesh, networks, data, loaded upstream states.

    ``stages`` (name -> Stage) are the stages whose checkpoints it can load; ``methods`` (family -> function
    ``(ctx, split, method) -> ArraySource``) make the anonymised splits that stages with ``anonymised=method``
    read, the family being ``method``'s first path component (``blur/sigma=2`` -> ``blur``). With
    ``keep_originals`` every anonymised split also holds the raw clips as ``original`` (the recovery attack's
    targets); the stages read a view without them.
    """

    def __init__(self, config, workdir: Path, mesh, *, stages: dict | None = None, methods: dict | None = None,
                 keep_originals: bool = False):
        self.config, self.workdir, self.mesh = config, Path(workdir), mesh
        from ppfer_jax.methods import registry  # the stages of `run`, which build on this module

        self.nets = Nets(config)
        self.stages = dict(registry.STAGE_BY_NAME if stages is None else stages)
        self.methods = {**dict.fromkeys(registry.ANONYMISER_STAGES, ppfer_split), **(methods or {})}
        self.keep_originals = keep_originals
        self._states: dict[str, TrainState] = {}
        self._anonymised: dict[tuple[str, str], ArraySource] = {}

    @property
    def eval_batch_size(self) -> int:
        """This process's share of ``train.eval_batch_size`` (a global batch)."""
        return process_batch_size(self.config.train.eval_batch_size, self.mesh, "train.eval_batch_size")

    def source(self, split: str, anonymised: str | None = None, *, with_originals: bool = False) -> ArraySource:
        """A split's clips: as rendered, or anonymised by a method (computed once per run and method)."""
        if anonymised is None:
            return load_split(self.config, split)
        key = (anonymised, split)
        if key not in self._anonymised:
            family = anonymised.split("/")[0]
            if family not in self.methods:
                raise ValueError(f"no anonymisation method {family!r} (of {anonymised!r}); known: "
                                 f"{', '.join(self.methods)}")
            self._anonymised[key] = self.methods[family](self, split, anonymised)
        full = self._anonymised[key]
        if with_originals:
            if "original" not in full.arrays:
                raise ValueError(f"the {anonymised!r} split {split!r} was made without its originals: build the "
                                 f"Context with keep_originals=True")
            return full
        return ArraySource({k: v for k, v in full.arrays.items() if k != "original"})

    def map_clips(self, source, video_fn: Callable, *, on_host: bool = False) -> ArraySource:
        """``source`` with every clip's video replaced by ``video_fn(uint8 (B, T, H, W, 3))`` -> uint8, in
        order, gathered on every process. ``video_fn`` is jitted over global batches, or (``on_host``) called on
        this process's numpy batches (OpenCV, say). With ``keep_originals`` the raw video stays as ``original``."""
        chain = video_fn if on_host else jax.jit(video_fn)
        parts = []
        for batch in iterate_once(source, self.eval_batch_size):  # this process's shard
            if self.keep_originals:
                batch["original"] = batch["video"]
            if on_host:
                batch["video"] = np.asarray(chain(batch["video"]), np.uint8)
            batch = global_batch(batch, self.mesh)
            if not on_host:
                batch["video"] = chain(batch["video"])
            batch = {k: process_allgather(v, tiled=True) for k, v in batch.items()}  # every process: all clips
            mask = batch.pop(MASK)
            parts.append({k: v[mask] for k, v in batch.items()})
        return ArraySource({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})

    def evaluator(self, counts_fn, split: str, anonymised: str | None = None,
                  originals: bool = False) -> Callable[[TrainState], dict]:
        """eval_fn(state) -> {metric: value} summing ``counts_fn``'s {'correct', 'total'} over one pass (a metric
        given as a bare array, a confusion matrix say, comes back summed)."""
        jitted = jax.jit(counts_fn)
        batch_size = self.eval_batch_size

        def eval_fn(state) -> dict:
            sums = None
            for batch in iterate_once(self.source(split, anonymised, with_originals=originals), batch_size):
                out = jitted(state, global_batch(batch, self.mesh))
                sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
            sums = jax.device_get(sums)
            return {name: metrics.ratio(v["correct"], v["total"]) if isinstance(v, dict) else np.asarray(v)
                    for name, v in sums.items()}
        return eval_fn

    def shape_state(self, stage: Stage) -> Callable[[], TrainState]:
        """A traceable init with fresh weights everywhere: the structure of the stage's checkpoints."""
        def init():
            key = stage_key(self.config, stage.name)
            trained = {n: self.nets.init(n, jax.random.fold_in(key, zlib.crc32(n.encode()))) for n in stage.trains}
            frozen = {n: self.nets.init(n, key) for n in stage.frozen}
            return _make_state(trained, frozen, stage_optimizer(self.config, stage))
        return init

    def state_sharding(self, stage: Stage) -> TrainState:
        """Where each array of the stage's state lives on the mesh (``config.sharding.rules``)."""
        s = self.config.sharding
        return tree_shardings(jax.eval_shape(self.shape_state(stage)), self.mesh, s.rules, s.min_size)

    def load(self, stage_name: str) -> TrainState:
        """The stage's selected (best, else final) state, loaded once per run."""
        if stage_name not in self._states:
            if stage_name not in self.stages:
                raise ValueError(f"no stage {stage_name!r} to load networks from")
            stage = self.stages[stage_name]
            target = abstract_state(self.shape_state(stage), self.state_sharding(stage))
            self._states[stage_name] = load_best(self.workdir, stage_name, target)
        return self._states[stage_name]

    def network(self, name: str, stage_name: str | None = None) -> dict:
        state = self.load(stage_name or producer(name))
        return {"params": state.params[name], "batch_stats": state.batch_stats[name]}

    def forget(self, stage_name: str) -> None:
        self._states.pop(stage_name, None)

    def forget_method(self, method: str | None, keep: tuple[str, ...] = ()) -> None:
        """Frees a method's anonymised splits, but those of ``keep``."""
        for key in [k for k in self._anonymised if k[0] == method and k[1] not in keep]:
            del self._anonymised[key]


def _make_state(trained: dict, frozen: dict, tx) -> TrainState:
    return TrainState.create(params={n: v["params"] for n, v in trained.items()}, tx=tx,
                             batch_stats={n: v["batch_stats"] for n, v in trained.items()}, frozen=frozen)


def _loader_augment(config, stage: Stage) -> RandomResizedCrop | None:
    """The paper's random resized crop of F_u's training clips (uint8, in the loader), when configured."""
    scale = config.train.augment.get("resized_crop_scale")
    return RandomResizedCrop(scale=tuple(scale)) if stage.augmented and scale else None


def run_stage(ctx: Context, stage: Stage, *, stop_after: int | None = None) -> dict:
    """Trains one stage with ``fit`` (resuming or skipping as fit does); returns its summary."""
    config = ctx.config
    section = config.train[stage.train_key]
    tx = stage_optimizer(config, stage)
    frozen = {n: ctx.network(n, stage.source_of(n)) for n in stage.frozen}
    # Where each trained network starts: an upstream stage's weights, converted weights (init_from), or fresh.
    starts = {n: ctx.network(n, stage.init_from[n]) if n in stage.init_from else ctx.nets.pretrained(n)
              for n in stage.trains}
    starts = {n: v for n, v in starts.items() if v is not None}
    shape_init = ctx.shape_state(stage)

    def init_state():
        fresh = shape_init()
        trained = {n: starts.get(n, {"params": fresh.params[n], "batch_stats": fresh.batch_stats[n]})
                   for n in stage.trains}
        return _make_state(trained, frozen, tx)

    step_fn = stage.step(ctx.nets, config, tx)
    batch_size = process_batch_size(section.batch_size, ctx.mesh, f"train.{stage.train_key}.batch_size")
    data = make_iterator(ctx.source(stage.split, stage.anonymised, with_originals=stage.originals),
                         batch_size=batch_size,
                         seed=stage_seed(config, stage.name), transform=_loader_augment(config, stage),
                         worker_count=config.train.loader_workers)
    eval_every = section.get("eval_every") or None
    log_every = min(config.train.log_every, section.steps)
    checkpoint_every = max(log_every, (min(config.train.checkpoint_every, section.steps) // log_every) * log_every)
    _, summary = fit(stage.name, ctx.workdir, init_state=init_state, step_fn=step_fn, train_data=data,
                     num_steps=section.steps, rng=stage_key(config, stage.name), mesh=ctx.mesh,
                     state_sharding=ctx.state_sharding(stage),
                     eval_fn=stage.evaluate(ctx), eval_every=eval_every if stage.select else None,
                     checkpoint_every=checkpoint_every, log_every=log_every, select=stage.select,
                     stop_after=stop_after)
    ctx.forget(stage.name)
    return summary
