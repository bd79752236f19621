"""The training core every stage shares: the train state, the jitted step, and ``fit``.

A stage supplies ``init_state() -> TrainState``, a pure step
``(state, batch, rng) -> (state, metrics)``, optionally ``eval_fn(state) -> dict``,
and a grain iterator of numpy batches. ``fit`` runs the steps, logs, evaluates,
checkpoints, resumes after a crash and marks the stage done.

Layout under ``workdir/<stage>/``::

    metrics.jsonl                   one JSON record per train log / evaluation
    events.out.tfevents.*           the same numbers as TensorBoard scalars (train/<name>, eval/<name>)
    checkpoints/latest/<step>/      state, data (grain iterator position), meta
    checkpoints/best/<step>/        state and meta at the best evaluation so far (written with the next latest)
    DONE.json                       the summary, written last and atomically

Resume semantics: a run killed at any step (``stop_after`` simulates it)
restarts from its last 'latest' checkpoint and recomputes the steps after it;
nothing is saved at the kill. The update after k steps always gets the key
``step_rng(root, k)`` and the iterator resumes at its saved position, so on the
same devices the recomputed steps, metrics records and final parameters are
bit-identical to an uninterrupted run. Records and best checkpoints newer than
the restored step are discarded first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, Sharding
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from data_pipelines.files import write_json_atomically, write_text_atomically
from ppfer_jax.parallel import batch_sharding, global_batch, replicated, step_rng
from ppfer_jax.timing import charged

METRICS_FILE = "metrics.jsonl"
DONE_FILE = "DONE.json"
CHECKPOINTS = "checkpoints"

Metrics = dict[str, float]
StepFn = Callable[["TrainState", dict[str, jax.Array], jax.Array], tuple["TrainState", dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class PhasedStep:
    """A step that is one of several plain steps, chosen on the host by the step number (``phase(step)`` indexes
    ``steps``), each compiled on its own: XLA:CPU ran a ``lax.switch`` over three such steps about ten times slower
    than the chosen step alone (benchmarks/RESULTS.md). Every step must return the same metric names."""

    steps: tuple[StepFn, ...]
    phase: Callable[[int], int]


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes, as one pytree, checkpointed whole.

    The optax transform is not stored: it is static configuration that the
    stage's step builder closes over, so the state holds only arrays.
    ``params``/``batch_stats`` may hold several networks ({'low': .., 'high': ..}).
    ``frozen`` holds variables of networks the step reads but never
    differentiates (frozen means "not an argument of grad"); they are
    checkpointed too, so a resumed stage needs nothing from upstream.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    frozen: Any

    @classmethod
    def create(cls, *, params, tx: optax.GradientTransformation, batch_stats=None, frozen=None) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats={} if batch_stats is None else batch_stats,
                   opt_state=tx.init(params), frozen={} if frozen is None else frozen)

    def apply_gradients(self, *, grads, tx: optax.GradientTransformation, batch_stats=None) -> TrainState:
        """One optimiser update; advances ``step``, which ``fit`` checks against its own count."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state,
                            batch_stats=self.batch_stats if batch_stats is None else batch_stats)


def compile_step(step_fn: StepFn, mesh: Mesh, state_sharding: Sharding | Any = None):
    """``step_fn`` jitted over ``mesh``: state donated, batch split on 'data', key replicated.

    ``state_sharding`` (one sharding or a TrainState of them) defaults to
    replicated. Compiling the same ``step_fn`` again reuses jax's cache.
    """
    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    return jax.jit(step_fn,
                   in_shardings=(state_sharding, batch_sharding(mesh), replicated(mesh)),
                   out_shardings=(state_sharding, replicated(mesh)),
                   donate_argnums=0)


def abstract_state(init_state: Callable[[], TrainState], state_sharding: Sharding | Any) -> TrainState:
    """Shapes, dtypes and shardings of ``init_state()`` without running it: the target for restoring."""
    shapes = jax.eval_shape(init_state)
    if isinstance(state_sharding, Sharding):
        state_sharding = jax.tree.map(lambda _: state_sharding, shapes)
    return jax.tree.map(lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
                        shapes, state_sharding)


def is_complete(workdir: str | os.PathLike, stage: str) -> bool:
    """True once ``fit`` has finished the stage (its DONE.json exists)."""
    return (Path(workdir) / stage / DONE_FILE).exists()


def read_summary(workdir: str | os.PathLike, stage: str) -> dict | None:
    """The finished stage's summary (final and best metrics), or None if it is not complete."""
    path = Path(workdir) / stage / DONE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def load_best(workdir: str | os.PathLike, stage: str, abstract: TrainState) -> TrainState:
    """The stage's best state by its selected eval metric; its latest state when it selected none.

    ``abstract`` (see ``abstract_state``) gives structure and shardings, so a
    state saved on one mesh loads onto another.
    """
    checkpoints = _Checkpoints(Path(workdir) / stage / CHECKPOINTS, read_only=True)
    try:
        kind = "best" if checkpoints.best.latest_step() is not None else "latest"
        if checkpoints.managers[kind].latest_step() is None:
            raise FileNotFoundError(f"stage {stage!r} has no checkpoint under {Path(workdir) / stage / CHECKPOINTS}")
        return checkpoints.restore_state(kind, abstract)
    finally:
        checkpoints.close()


def fit(
    stage: str,
    workdir: str | os.PathLike,
    *,
    init_state: Callable[[], TrainState],
    step_fn: StepFn | PhasedStep,
    train_data: grain.DatasetIterator,
    num_steps: int,
    rng: jax.Array,
    mesh: Mesh,
    state_sharding: Sharding | Any = None,
    eval_fn: Callable[[TrainState], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 50,
    select: tuple[str, Literal["min", "max"]] | None = None,
    patience: int | None = None,
    stop_after: int | None = None,
) -> tuple[TrainState, dict]:
    """Trains one stage to ``num_steps``, resuming from its latest checkpoint; returns (state, summary).

    ``step_fn`` is the plain step (or a ``PhasedStep`` of several); it is compiled here with
    ``compile_step`` and must advance ``state.step`` by one. ``init_state`` must be traceable
    (``jax.eval_shape`` builds the restore target); it runs only when no
    checkpoint exists. ``eval_fn`` runs every ``eval_every`` steps and at the
    end and must return the same numbers on every process; ``select`` =
    (metric, 'min' | 'max') keeps the best such state; with ``patience``, the stage stops (finished) once that many
    evaluations in a row have not improved on the best: steps past a plateau change nothing downstream, which
    loads the best state. Train metrics are
    averaged over ``log_every`` steps; every metric must stay finite.
    A complete stage is not retrained: its final state and stored summary
    are returned. ``stop_after`` stops this call after that many steps as if
    killed (no checkpoint, no DONE.json): the next call resumes.
    """
    _check_schedule(num_steps, log_every, checkpoint_every, eval_fn, eval_every, select, stop_after, patience)
    stage_dir = Path(workdir) / stage
    sharding = replicated(mesh) if state_sharding is None else state_sharding
    target = abstract_state(init_state, sharding)
    checkpoints = _Checkpoints(stage_dir / CHECKPOINTS)
    try:
        summary = read_summary(workdir, stage)
        if summary is not None:
            if summary["num_steps"] != num_steps:
                raise ValueError(f"stage {stage!r} finished at step {summary['num_steps']} but num_steps is "
                                 f"{num_steps}; delete {stage_dir / DONE_FILE} to train it further")
            return checkpoints.restore_state("latest", target), summary
        resumed = checkpoints.resume(target, train_data)
        if resumed is None:
            state, record = jax.jit(init_state, out_shardings=sharding)(), _Record(step=0)
        else:
            state, record = resumed
        if record.step > num_steps:
            raise ValueError(f"stage {stage!r} has a checkpoint at step {record.step}, past num_steps={num_steps}")
        loop = _Loop(stage, stage_dir, checkpoints, eval_fn, select, patience)
        phased = step_fn if isinstance(step_fn, PhasedStep) else PhasedStep((step_fn,), lambda step: 0)
        compiled = [compile_step(fn, mesh, sharding) for fn in phased.steps]
        state = loop.run(state, record, lambda step: compiled[phased.phase(step)], train_data, mesh, rng,
                         num_steps=num_steps, log_every=log_every, eval_every=eval_every,
                         checkpoint_every=checkpoint_every, stop_after=stop_after)
        summary = _summary(stage, num_steps, record, select)
        if record.step == num_steps or record.stopped:
            checkpoints.wait()
            if _is_main_process():
                write_json_atomically(stage_dir / DONE_FILE, summary)
                tqdm.write(_describe(summary))
        return state, summary
    finally:
        checkpoints.close()


@dataclasses.dataclass
class _Record:
    """What a resumed run needs besides state and iterator; stored as each checkpoint's meta."""

    step: int
    best: dict | None = None        # {'step', 'value', 'metrics'} of the best evaluation so far
    last_train: Metrics | None = None
    last_eval: Metrics | None = None
    stopped: bool = False           # stopped past a plateau of the selected metric (``patience``): finished


class _Loop:
    """The step loop of one ``fit`` call: logging, evaluation, best selection, checkpoints."""

    def __init__(self, stage, stage_dir, checkpoints, eval_fn, select, patience):
        self.stage = stage
        self.checkpoints = checkpoints
        self.eval_fn = eval_fn
        self.select = select
        self.patience = patience
        self.pending_best = None  # (step, state, record) of a best evaluation not yet written
        self.log = _MetricsLog(stage_dir / METRICS_FILE, enabled=_is_main_process())
        self.window = _TrainWindow(stage)

    def run(self, state, record, step_for, train_data, mesh, rng, *, num_steps, log_every, eval_every,
            checkpoint_every, stop_after):
        # Jitted with replicated outputs (device_put cannot place onto other processes' devices): every process
        # holds the same keys, as a replicated input must.
        key_for_step = jax.jit(functools.partial(step_rng, rng), out_shardings=replicated(mesh))
        # the best step named by the latest checkpoint: its best checkpoint must stay; newer ones are recomputed
        self.committed_best = _best_step(record)
        self.checkpoints.keep_best({self.committed_best})
        stop_at = num_steps if stop_after is None else min(num_steps, record.step + stop_after)
        bar = tqdm(total=num_steps, initial=record.step, desc=self.stage, unit="step", dynamic_ncols=True,
                   disable=None if _is_main_process() else True)
        with self.log.resume_at(record.step), bar:
            while record.step < stop_at and not record.stopped:
                batch = global_batch(next(train_data), mesh)
                state, metrics = step_for(record.step)(state, batch, key_for_step(record.step))
                record.step += 1
                self.window.add(record.step, metrics)
                bar.update()
                if record.step % log_every == 0 or record.step == num_steps:
                    self._log_train(record, bar)
                if self.eval_fn is not None and (record.step == num_steps or
                                                 (eval_every is not None and record.step % eval_every == 0)):
                    self._evaluate(state, record, train_data)
                    if self.patience is not None and record.best is not None:
                        # evaluations since the best one (they come every eval_every steps): the same on a resume
                        record.stopped = (record.step - record.best["step"]) // eval_every >= self.patience
                        if record.stopped and record.step % log_every:
                            self._log_train(record, bar)  # the steps since the last log
                if record.step % checkpoint_every == 0 or record.step == num_steps or record.stopped:
                    self.window.drain()
                    _check_step_counter(self.stage, state, record.step)
                    self._save(state, record, train_data)
        with charged("checkpoint"):
            self.checkpoints.keep_best({self.committed_best})  # waits for the last writes
        return state

    def _log_train(self, record, bar):
        record.last_train, steps_per_sec = self.window.flush()
        self.log.write(record.step, "train", record.last_train, steps_per_sec=steps_per_sec)
        bar.set_postfix({name: f"{value:.4g}" for name, value in record.last_train.items()}, refresh=False)

    def _evaluate(self, state, record, train_data):
        """Runs eval_fn, logs it, and keeps the state as the best when the selected metric improves."""
        self.window.drain()
        with charged("evaluate"):
            metrics = {name: float(value) for name, value in self.eval_fn(state).items()}
        record.last_eval = metrics
        self.log.write(record.step, "eval", metrics)
        if self.select is None:
            return
        name, mode = self.select
        if name not in metrics:
            raise KeyError(f"stage {self.stage!r}: eval_fn returned no {name!r} to select on; "
                           f"it returned {sorted(metrics)}")
        value = metrics[name]
        if not math.isfinite(value):
            raise FloatingPointError(f"stage {self.stage!r}, step {record.step}: eval metric {name!r} is {value}")
        if record.best is None or (value > record.best["value"] if mode == "max" else value < record.best["value"]):
            record.best = {"step": record.step, "value": value, "metrics": metrics}
            # kept in memory (the state is donated to the next step) and written with the next 'latest': one
            # write per checkpoint interval however often the metric improves
            self.pending_best = (record.step, _copy(state), dataclasses.replace(record))

    def _save(self, state, record, train_data):
        """The pending best, then 'latest' (written in the background while training goes on). Best checkpoints
        other than the one the previous 'latest' names go first: that 'latest' is on disk by then."""
        with charged("checkpoint"):
            self.checkpoints.keep_best({self.committed_best})
            if self.pending_best is not None:
                step, best_state, best_record = self.pending_best
                self.checkpoints.save("best", step, best_state, None, best_record)
                self.pending_best = None
            self.checkpoints.save("latest", record.step, state, train_data, record)
            self.committed_best = _best_step(record)


class _TrainWindow:
    """Train metrics since the last log: kept on device until needed, then checked finite and averaged.

    Fetching only at log, eval and checkpoint time keeps dispatch asynchronous;
    the check precedes every checkpoint, so a non-finite state is never saved.
    """

    def __init__(self, stage: str):
        self.stage = stage
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.fetched: list[Metrics] = []
        self.started = time.perf_counter()

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.pending.append((step, metrics))

    def drain(self) -> None:
        for step, metrics in jax.device_get(self.pending):
            for name, value in metrics.items():
                if not np.all(np.isfinite(value)):
                    raise FloatingPointError(
                        f"stage {self.stage!r}, step {step}: train metric {name!r} is {value}; "
                        f"the last checkpoint before it is kept")
            self.fetched.append({name: float(value) for name, value in metrics.items()})
        self.pending = []

    def flush(self) -> tuple[Metrics, float]:
        """The window's mean metrics and its steps per second; starts a new window."""
        self.drain()
        mean = {name: float(np.mean([metrics[name] for metrics in self.fetched])) for name in self.fetched[0]}
        now = time.perf_counter()
        steps_per_sec = len(self.fetched) / (now - self.started)
        self.fetched, self.started = [], now
        return mean, steps_per_sec


class _MetricsLog:
    """``metrics.jsonl``: one JSON record per line, appended and flushed as it happens (process 0 only);
    and the same numbers as TensorBoard scalars in an event file beside it, without TensorFlow (tensorboardX).

    Each record's finite scalars (its metrics and extras such as steps_per_sec) become ``<split>/<name>`` at
    the record's step and wall time, as float32 (TensorBoard's simple_value); arrays and non-finite values are
    left out. Every ``fit`` call starts a new event file whose first event purges the steps after the resumed
    one (tensorboardX's ``purge_step``: TensorBoard drops the old files' events at steps >= it), so the
    steps a resumed run recomputes appear once, with the new values, as in metrics.jsonl. The file name
    carries a nanosecond suffix: tensorboardX names files by the second and would overwrite an earlier
    call's file from the same second, and the suffix keeps names sorting in the order they were written.
    """

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled
        self.file = None
        self.events = None
        self.resumed_step = 0

    def resume_at(self, step: int) -> _MetricsLog:
        """Drops records past ``step`` (to be recomputed by a resumed run) and any torn last line;
        the event file opened on entering purges them in TensorBoard."""
        self.resumed_step = step
        if self.enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines(keepends=True)
                    if (record := _parse_record(line)) is not None and record["step"] <= step]
            write_text_atomically(self.path, "".join(kept))
        return self

    def write(self, step: int, split: str, metrics: Metrics, **extra: float) -> None:
        if self.enabled:
            record = {"step": step, "split": split, "metrics": metrics, **extra, "wall_time": time.time()}
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            for name, value in {**metrics, **extra}.items():
                if _is_finite_scalar(value):
                    self.events.add_scalar(f"{split}/{name}", float(value), step, walltime=record["wall_time"])
            self.events.flush()

    def __enter__(self):
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("a")
            self.events = SummaryWriter(str(self.path.parent), purge_step=self.resumed_step + 1,
                                        filename_suffix=f".{time.time_ns()}")
        return self

    def __exit__(self, *exc_info):
        if self.file is not None:
            self.file.close()
        if self.events is not None:
            self.events.close()


class _Checkpoints:
    """Orbax managers for 'latest' (to resume) and 'best' (to use); each item is state + data + meta (a best one:
    state + meta).

    'latest' keeps one step. 'best' keeps the best step named in the latest
    checkpoint's meta plus the newest best, so a resumed run always finds the
    best that matches its restored record.
    """

    def __init__(self, directory: Path, read_only: bool = False):
        directory = Path(directory).absolute()  # orbax refuses relative paths, e.g. the default --workdir ./workdir
        options = {"latest": ocp.CheckpointManagerOptions(max_to_keep=1, read_only=read_only, create=not read_only),
                   "best": ocp.CheckpointManagerOptions(read_only=read_only, create=not read_only)}
        self.managers = {kind: ocp.CheckpointManager(directory / kind, options=options[kind],
                                                     item_names=("state", "data", "meta"))
                         for kind in ("latest", "best")}
        self.best = self.managers["best"]

    def save(self, kind: str, step: int, state: TrainState, train_data, record: _Record) -> None:
        """``train_data`` None: no iterator position (a best checkpoint, which nothing resumes from)."""
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dataclasses.asdict(record)))
        if train_data is not None:
            items["data"] = grain.checkpoint.CheckpointSave(train_data)
        self.managers[kind].save(step, args=ocp.args.Composite(**items))

    def resume(self, target: TrainState, train_data) -> tuple[TrainState, _Record] | None:
        """The latest state and record, with ``train_data`` moved to its saved position; None if none saved."""
        step = self.managers["latest"].latest_step()
        if step is None:
            return None
        restored = self.managers["latest"].restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=grain.checkpoint.CheckpointRestore(train_data),
            meta=ocp.args.JsonRestore()))
        return restored.state, _Record(**restored.meta)

    def restore_state(self, kind: str, target: TrainState) -> TrainState:
        manager = self.managers[kind]
        return manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state

    def keep_best(self, steps: set[int | None]) -> None:
        """Deletes every best checkpoint but ``steps`` (None stands for no step).

        Waits for pending saves first: the best named by a 'latest' checkpoint
        may go only once a newer 'latest' is on disk.
        """
        self.wait()
        for step in self.best.all_steps():
            if step not in steps:
                self.best.delete(step)

    def wait(self) -> None:
        for manager in self.managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()


def _check_schedule(num_steps, log_every, checkpoint_every, eval_fn, eval_every, select, stop_after,
                    patience=None) -> None:
    """Rejects a schedule that cannot run, or that would make a resumed run differ from an uninterrupted one."""
    for name, value in (("num_steps", num_steps), ("log_every", log_every), ("checkpoint_every", checkpoint_every),
                        ("eval_every", eval_every), ("stop_after", stop_after), ("patience", patience)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of steps, got {value}")
    if checkpoint_every % log_every:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be a multiple of log_every={log_every}, "
                         f"so that no averaged train log spans a checkpoint a run may resume from")
    if eval_fn is None and (eval_every is not None or select is not None):
        raise ValueError("eval_every and select need an eval_fn")
    if patience is not None and (select is None or eval_every is None):
        raise ValueError("patience (evaluations without improvement before stopping) needs select and eval_every")
    if select is not None and select[1] not in ("min", "max"):
        raise ValueError(f"select must be (metric, 'min' | 'max'), got {select!r}")


def _check_step_counter(stage: str, state: TrainState, step: int) -> None:
    """Checkpoints and the best step are named by the loop's count; a state counting otherwise would mislabel them."""
    if int(state.step) != step:
        raise ValueError(f"stage {stage!r}: state.step is {int(state.step)} after {step} steps; "
                         f"step_fn must advance it by one (TrainState.apply_gradients does)")


@jax.jit
def _copy(state: TrainState) -> TrainState:
    """A copy of the state in new buffers (one dispatch)."""
    return jax.tree.map(jnp.copy, state)


def _best_step(record: _Record) -> int | None:
    return record.best["step"] if record.best else None


def _summary(stage: str, num_steps: int, record: _Record, select) -> dict:
    return {"stage": stage, "step": record.step, "num_steps": num_steps, "train": record.last_train,
            "eval": record.last_eval, "select": list(select) if select else None, "best": record.best,
            "stopped_at_plateau": record.stopped}


def _describe(summary: dict) -> str:
    """One human-readable line for the end of a stage."""
    parts = [f"{summary['stage']}: done at step {summary['step']}"
             + (f" of {summary['num_steps']} (its selected metric had stopped improving)"
                if summary.get("stopped_at_plateau") else "")]
    for split in ("train", "eval"):
        if summary[split]:
            parts.append(split + " " + " ".join(f"{k}={v:.4g}" for k, v in summary[split].items()))
    if summary["best"]:
        name = summary["select"][0]
        parts.append(f"best {name}={summary['best']['value']:.4g} at step {summary['best']['step']}")
    return "; ".join(parts)


def _parse_record(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _is_finite_scalar(value) -> bool:
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged list
        return False
    return array.ndim == 0 and array.dtype.kind in "biuf" and bool(np.isfinite(array))


def _is_main_process() -> bool:
    return jax.process_index() == 0
