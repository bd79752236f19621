"""The stage graph of ``ppfer-jax run``: runs the stages in order, skips finished ones, re-runs one on request.

Order: ``recipes/run.py``'s ``STAGES`` (the pretraining, the paper's s1-s3, no_privacy, the attackers, then the
``ppfer_robust`` row's stages), then evaluate. ``StageRunner`` is the one loop that trains what is missing and
times it, for ``run`` and ``reproduce`` alike. A stage is
finished when its ``DONE.json`` exists (``evaluate``: ``evaluate/results.json``);
a killed stage resumes from its last checkpoint (see ``training.fit``).
``rerun=NAME`` deletes that stage and every stage downstream of it (whose
inputs it changes), then runs what is missing.

The workdir remembers its config (``config.json``, written at the first run); a
run with a different config stops rather than mixing results. Only process 0
writes files.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jax

from data_pipelines.files import write_json_atomically
from ppfer_jax import evaluation, jobs, report
from ppfer_jax.parallel import mesh_from_config
from ppfer_jax.recipes import run as recipe
from ppfer_jax.stage import Stage, train_stage
from ppfer_jax.training import is_complete, read_summary

EVALUATE = "evaluate"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
STAGE_NAMES = tuple(s.name for s in recipe.STAGES) + (EVALUATE,)


def dependencies(name: str) -> set[str]:
    """Stages whose outputs ``name`` reads directly."""
    if name == EVALUATE:
        return {s.name for s in recipe.STAGES}
    stage = recipe.STAGE_BY_NAME[name]
    anonymiser = set(recipe.ANONYMISER_STAGES[stage.method].values()) if stage.method else set()
    return {stage.source_of(n) for n in stage.frozen} | anonymiser | set(stage.init_from.values())


def downstream(name: str) -> list[str]:
    """``name`` and every stage that reads it, directly or not, in run order."""
    hit = {name}
    for other in STAGE_NAMES:
        if dependencies(other) & hit:
            hit.add(other)
    return [n for n in STAGE_NAMES if n in hit]


def check_workdir_config(config, workdir: Path) -> None:
    """Stores the config at the first run; afterwards a different config stops the run. ``suite`` (which rows
    ``reproduce`` runs) changes no stage's numbers, so it may differ."""
    path = Path(workdir) / CONFIG_FILE
    current = json.loads(json.dumps(config.to_dict()))
    if path.exists():
        stored = json.loads(path.read_text())
        for section in (stored, current):
            section.pop("suite", None)
        if stored != current:
            diffs = sorted(_diff(stored, current))
            shown = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, a, b in diffs[:8])
            raise ValueError(f"workdir {workdir} holds results of a different config ({path}): {shown}"
                             f"{' ...' if len(diffs) > 8 else ''}. Use another --workdir, or delete {workdir} "
                             f"to start over")
    elif jax.process_index() == 0:
        write_json_atomically(path, current)


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _diff(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


def run(config, workdir, *, rerun: str | None = None, stop_after: dict | None = None, mesh=None,
        make_figure: bool = True) -> dict | None:
    """Runs every missing stage and the evaluation; returns the report (None if stopped early).

    ``stop_after`` ({stage: steps}) stops that stage after so many steps as if the
    process were killed (tests of resume use it); the run then returns None.
    """
    workdir = Path(workdir)
    if not config.data.num_identities:
        raise ValueError(f"config data.name {config.data.name!r} has no identity labels, and the method needs them "
                         f"(controllers, PLR): run it on CREMA-D (configs/cremad.py), which reads DFEW as its wild "
                         f"set for the expression controller")
    if config.wavelet.spatiotemporal:
        raise ValueError("config wavelet.spatiotemporal=True: the enhancers of this release work frame by frame "
                         "(the paper's 2-D transform); set it to False")
    if rerun is not None and rerun not in STAGE_NAMES:
        raise ValueError(f"--stage {rerun!r} is not a stage; stages: {', '.join(STAGE_NAMES)}")
    check_workdir_config(config, workdir)
    if rerun is not None and jax.process_index() == 0:
        for name in downstream(rerun):
            shutil.rmtree(workdir / name, ignore_errors=True)
        print(f"re-running {', '.join(downstream(rerun))}")
    ctx = recipe.context(config, workdir, mesh or mesh_from_config(config))
    runner = StageRunner(ctx)
    for name in downstream(rerun) if rerun is not None else ():
        runner.timings.pop(name, None)
    for stage in recipe.STAGES:
        if runner.run(stage, stop_after=(stop_after or {}).get(stage.name)) is None:
            return None  # stopped early on request
    results_path = workdir / EVALUATE / RESULTS_FILE
    if results_path.exists():
        results = json.loads(results_path.read_text())
    else:
        start = time.perf_counter()
        results = evaluation.evaluate(ctx, recipe.ANONYMISER_STAGES, recipe.METHOD_ROWS)
        runner.record(EVALUATE, time.perf_counter() - start)
        if jax.process_index() == 0:
            write_json_atomically(results_path, results)
    own = {name: seconds for name, seconds in runner.timings.items() if name in STAGE_NAMES}  # not reproduce's rows
    full = report.build(results, json.loads((workdir / CONFIG_FILE).read_text()), own)
    if jax.process_index() == 0:
        figure = (evaluation.figure_rows(ctx, recipe.ANONYMISER_STAGES, config.evaluate.figure_clips)
                  if make_figure else None)
        report.write(workdir, full, figure)
    return full


class StageRunner:
    """Trains the stages a workdir is missing, each once, and keeps ``timings.json`` (a resumed stage's time adds
    to the time it ran before)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.timings = load_timings(ctx.workdir)

    def run(self, stage: Stage, *, stop_after: int | None = None) -> dict | None:
        """The stage's summary, training it first if it is not finished; None if ``stop_after`` stopped it. Another
        process training it (``reproduce --jobs``) is waited for."""
        with jobs.stage_lock(self.ctx.workdir, stage.name):
            if not is_complete(self.ctx.workdir, stage.name):
                start = time.perf_counter()
                train_stage(self.ctx, stage, stop_after=stop_after)
                if not is_complete(self.ctx.workdir, stage.name):
                    return None
                self.record(stage.name, time.perf_counter() - start + self.timings.get(stage.name, 0.0))
        return read_summary(self.ctx.workdir, stage.name)

    def record(self, name: str, seconds: float) -> None:
        self.timings = save_timings(self.ctx.workdir, {name: seconds})


def load_timings(workdir: Path) -> dict:
    path = workdir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_timings(workdir: Path, timings: dict) -> dict:
    """Adds ``timings`` to the workdir's (other processes of ``reproduce --jobs`` add theirs); returns them all."""
    with jobs.file_lock(workdir, "timings"):
        merged = {**load_timings(workdir), **timings}
        if jax.process_index() == 0:
            write_json_atomically(workdir / "timings.json", merged)
    return merged
