"""What a stage is: the networks it trains and reads, its step, optimizer, keys, state shape and sharding.

A ``Stage`` is data: a step builder ``(nets, config, tx) -> step(state, batch, rng)`` and an eval builder
``(ctx) -> eval_fn(state)``, plus where each network comes from. ``train_stage`` turns one into a
``training.fit`` call. Upstream networks are loaded from their source stage's best checkpoint (its latest when it
selects none), stored in ``TrainState.frozen`` and applied on the fly inside the jitted step: nothing frozen is
ever an argument of ``grad``. The stage kinds live in ``stages/`` (one file each), the stage lists in
``recipes/``.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import jax
import optax

from data_pipelines.loader import RandomResizedCrop, make_iterator
from ppfer_jax.parallel import process_batch_size, tree_shardings
from ppfer_jax.training import TrainState, fit


@dataclasses.dataclass(frozen=True)
class Stage:
    """One trained stage: its networks, the frozen ones it reads, and where each trained one starts from."""

    name: str
    train_key: str                 # section of config.train
    trains: tuple[str, ...]
    frozen: tuple[str, ...]
    split: str                     # the data split it trains on
    method: str | None             # train and evaluate on this method's anonymised clips (None: the raw clips)
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


PRODUCERS = {"c_low": "pretrain/identity", "c_high": "pretrain/identity", "v_pl": "pretrain/identity",
             "v_sel": "pretrain/identity", "c_fc": "pretrain/expression", "f_low": "s1/privacy",
             "f_high": "s1/privacy", "f_fc": "s2/compensation", "f_u": "s3/utility", "attacker": "attack/adaptive"}


def producer(name: str) -> str:
    """The stage of the paper's recipe (``recipes/ppfer.py``) whose weights a frozen network is loaded from,
    unless a stage names another in ``sources``."""
    return PRODUCERS[name]


# -- steps and optimizers


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


def grouped_optimizer(groups: dict[str, tuple[str, ...]], inner: Callable | None = None) -> Callable:
    """An optimizer builder ``(config, section) -> transform`` keeping one state per group of networks, for steps
    that update the groups in turn (adversarial games): an update of one group never moves another through
    optimizer momentum. ``inner``: each group's optimizer builder (default ``optimizer_for``)."""
    def build(config, section) -> optax.GradientTransformation:
        transform = (inner or optimizer_for)(config, section)

        def init(params):
            return {group: transform.init({n: params[n] for n in names}) for group, names in groups.items()}

        def update(grads, state, params=None):
            updates, new_state = {}, {}
            for group, names in groups.items():
                part, new_state[group] = transform.update({n: grads[n] for n in names}, state[group],
                                                          None if params is None else {n: params[n] for n in names})
                updates.update(part)
            return updates, new_state
        return optax.GradientTransformation(init, update)
    return build


def update_group(params: dict, opt_state: dict, group: str, names, loss_fn, inner, *, has_aux: bool = False):
    """One group's turn in an adversarial step (``grouped_optimizer``'s per-group states): differentiates
    ``loss_fn`` of the group's networks ``names`` only, and updates them and the group's optimizer state in
    ``params`` / ``opt_state`` (dicts the step owns). Returns ``loss_fn``'s value."""
    own = {n: params[n] for n in names}
    out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(own)
    updates, opt_state[group] = inner.update(grads, opt_state[group], own)
    params.update(optax.apply_updates(own, updates))
    return out


# -- keys, seeds, state


def stage_key(config, name: str) -> jax.Array:
    """The stage's root key: the config seed folded with a stable hash of the stage name."""
    return jax.random.fold_in(jax.random.key(config.seed, impl=config.rng_impl), zlib.crc32(name.encode()))


def stage_seed(config, name: str) -> int:
    """The stage's data-order seed (grain), derived the same way."""
    return (config.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def net_variables(state: TrainState, name: str) -> dict:
    return {"params": state.params[name], "batch_stats": state.batch_stats[name]}


def make_state(trained: dict, frozen: dict, tx) -> TrainState:
    return TrainState.create(params={n: v["params"] for n, v in trained.items()}, tx=tx,
                             batch_stats={n: v["batch_stats"] for n, v in trained.items()}, frozen=frozen)


def shape_state(nets, stage: Stage) -> Callable[[], TrainState]:
    """A traceable init with fresh weights everywhere: the structure of the stage's checkpoints."""
    def init():
        key = stage_key(nets.config, stage.name)
        trained = {n: nets.init(n, jax.random.fold_in(key, zlib.crc32(n.encode()))) for n in stage.trains}
        frozen = {n: nets.init(n, key) for n in stage.frozen}
        return make_state(trained, frozen, stage_optimizer(nets.config, stage))
    return init


def state_sharding(nets, mesh, stage: Stage) -> TrainState:
    """Where each array of the stage's state lives on the mesh (``config.sharding.rules``)."""
    s = nets.config.sharding
    return tree_shardings(jax.eval_shape(shape_state(nets, stage)), mesh, s.rules, s.min_size)


# -- training one stage


def loader_augment(config, stage: Stage) -> RandomResizedCrop | None:
    """The paper's random resized crop of F_u's training clips (uint8, in the loader), when configured."""
    scale = config.train.augment.get("resized_crop_scale")
    return RandomResizedCrop(scale=tuple(scale)) if stage.augmented and scale else None


def train_stage(ctx, stage: Stage, *, stop_after: int | None = None) -> dict:
    """Trains one stage with ``fit`` (resuming or skipping as fit does); returns its summary."""
    config = ctx.config
    section = config.train[stage.train_key]
    tx = stage_optimizer(config, stage)
    frozen = {n: ctx.network(n, stage.source_of(n)) for n in stage.frozen}
    # Where each trained network starts: an upstream stage's weights, converted weights (init_from), or fresh.
    starts = {n: ctx.network(n, stage.init_from[n]) if n in stage.init_from else ctx.nets.pretrained(n)
              for n in stage.trains}
    starts = {n: v for n, v in starts.items() if v is not None}
    shape_init = shape_state(ctx.nets, stage)

    def init_state():
        fresh = shape_init()
        trained = {n: starts.get(n, {"params": fresh.params[n], "batch_stats": fresh.batch_stats[n]})
                   for n in stage.trains}
        return make_state(trained, frozen, tx)

    step_fn = stage.step(ctx.nets, config, tx)
    batch_size = process_batch_size(section.batch_size, ctx.mesh, f"train.{stage.train_key}.batch_size")
    data = make_iterator(ctx.source(stage.split, stage.method, with_originals=stage.originals),
                         batch_size=batch_size, seed=stage_seed(config, stage.name),
                         transform=loader_augment(config, stage), worker_count=config.train.loader_workers)
    eval_every = section.get("eval_every") or None
    log_every = min(config.train.log_every, section.steps)
    checkpoint_every = max(log_every, (min(config.train.checkpoint_every, section.steps) // log_every) * log_every)
    _, summary = fit(stage.name, ctx.workdir, init_state=init_state, step_fn=step_fn, train_data=data,
                     num_steps=section.steps, rng=stage_key(config, stage.name), mesh=ctx.mesh,
                     state_sharding=state_sharding(ctx.nets, ctx.mesh, stage),
                     eval_fn=stage.evaluate(ctx), eval_every=eval_every if stage.select else None,
                     checkpoint_every=checkpoint_every, log_every=log_every, select=stage.select,
                     patience=section.get("patience") if stage.select else None, stop_after=stop_after)
    ctx.forget(stage.name)
    return summary
