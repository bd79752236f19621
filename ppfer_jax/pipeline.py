"""The stage graph of ``ppfer-jax run``: trains the stages a workdir is missing, several at once, then evaluates.

The stages are ``recipes/run.py``'s ``stages_for(config)`` (the pretraining, the paper's s1-s3, no_privacy, the
attackers, the ``ppfer_robust`` row's stages, the open-set attackers where the data has such people); a stage may start once every stage it reads (``dependencies``) is finished.
``StageRunner`` is the one loop that trains what is missing and times it, for ``run`` and ``reproduce`` alike:
``train_all`` takes, of the stages not finished, the first whose inputs are finished and which no other process
holds (``jobs.stage_lock``), in ``critical_path_first`` order, and waits when none is ready. ``run --jobs N``
starts N - 1 helper processes (``python -m ppfer_jax.pipeline WORKDIR INDEX``) running the same loop, so
independent stages train at the same time; every stage's numbers depend on the config and seed only, not on the
process that trains it. ``--jobs 1`` trains them one at a time in run order.

A stage is finished when its ``DONE.json`` exists (``evaluate``: ``evaluate/results.json``); a killed stage
resumes from its last checkpoint (see ``training.fit``). ``rerun=NAME`` deletes that stage and every stage
downstream of it (whose inputs it changes), then runs what is missing. Each stage's time, split into compile,
steps, evaluation, data and checkpoints, is written to ``<stage>/timing.json`` (``ppfer_jax/timing.py``).

The workdir remembers its config (``config.json``, written at the first run); a
run with a different config stops rather than mixing results. Only process 0
writes files.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import jax

from data_pipelines.files import write_json_atomically
from ppfer_jax import anonymised, config_checks, evaluation, report, timing
from ppfer_jax import jobs as job_processes
from ppfer_jax.parallel import mesh_from_config
from ppfer_jax.recipes import openset
from ppfer_jax.recipes import run as recipe
from ppfer_jax.stage import Stage, train_stage
from ppfer_jax.training import is_complete, read_summary

EVALUATE = "evaluate"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
STAGE_NAMES = tuple(s.name for s in recipe.STAGES) + (EVALUATE,)
TIMING_FILE = "timing.json"
POLL_S = 0.5  # how often a process with no stage ready looks again


def dependencies(name: str) -> set[str]:
    """Stages whose outputs ``name`` reads directly."""
    if name == EVALUATE:
        return {s.name for s in recipe.STAGES}
    stage = recipe.STAGE_BY_NAME[name]
    anonymiser = set(recipe.ANONYMISER_STAGES[stage.method].values()) if stage.method else set()
    return {stage.source_of(n) for n in stage.frozen} | anonymiser | set(stage.init_from.values())


def critical_path_first(config, stages) -> list[Stage]:
    """``stages`` (in run order) ordered by the longest chain of work from each to the end of the run -- its own
    and its downstream stages' steps x batch size, a proxy for their time -- ties in run order: with several
    processes, the chain the run would wait longest for starts first."""
    stages = list(stages)
    chain: dict[str, float] = {}
    for stage in reversed(stages):  # run order is topological: every reader comes later
        section = config.train[stage.train_key]
        readers = [chain[s.name] for s in stages if s.name in chain and stage.name in dependencies(s.name)]
        chain[stage.name] = section.steps * section.batch_size + max(readers, default=0)
    return sorted(stages, key=lambda stage: -chain[stage.name])


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
            diffs = sorted(config_differences(stored, current))
            shown = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, a, b in diffs[:8])
            raise ValueError(f"workdir {workdir} holds results of a different config ({path}): {shown}"
                             f"{' ...' if len(diffs) > 8 else ''}. Use another --workdir, or delete {workdir} "
                             f"to start over")
    elif jax.process_index() == 0:
        write_json_atomically(path, current)


def config_differences(a, b, prefix=""):
    """(dotted key, a's value, b's value) for every leaf where two config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from config_differences(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


def run(config, workdir, *, rerun: str | None = None, stop_after: dict | None = None, mesh=None,
        make_figure: bool = True, jobs: int | None = None) -> dict | None:
    """Runs every missing stage and the evaluation; returns the report (None if stopped early).

    ``jobs``: processes training stages at once (default ``jobs.default_jobs()``; this one and ``jobs`` - 1
    helpers). ``stop_after`` ({stage: steps}) stops that stage after so many steps as if the process were killed
    (tests of resume use it; one process); the run then returns None.
    """
    workdir = Path(workdir)
    stages = recipe.stages_for(config)
    config_checks.check(config, stages=tuple({stage.train_key for stage in stages}))
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs: expected a positive number of processes, got {jobs}")
    if rerun is not None and rerun not in STAGE_NAMES:
        raise ValueError(f"--stage {rerun!r} is not a stage; stages: {', '.join(STAGE_NAMES)}")
    check_workdir_config(config, workdir)
    if rerun is not None and jax.process_index() == 0:
        for name in downstream(rerun):
            shutil.rmtree(workdir / name, ignore_errors=True)
        shutil.rmtree(workdir / anonymised.DIRECTORY, ignore_errors=True)  # made by networks that may change
        print(f"re-running {', '.join(downstream(rerun))}")
    ctx = recipe.context(config, workdir, mesh or mesh_from_config(config))
    runner = StageRunner(ctx)
    for name in downstream(rerun) if rerun is not None else ():
        runner.timings.pop(name, None)
    pending = [stage for stage in stages if not is_complete(workdir, stage.name)]
    count = 1 if stop_after else min(jobs or job_processes.default_jobs(), max(len(pending), 1))
    helpers = job_processes.start_helpers(config, workdir, count - 1, __name__, "training stages")
    try:
        if not runner.train_all(stages, stop_after=stop_after, parallel=count > 1):
            return None  # stopped early on request
        job_processes.wait(helpers)
    finally:
        job_processes.stop(helpers)
    runner.timings = load_timings(workdir)
    results_path = workdir / EVALUATE / RESULTS_FILE
    if results_path.exists():
        results = json.loads(results_path.read_text())
    else:
        start, mark = time.perf_counter(), timing.snapshot()
        with timing.charged("evaluate"):
            results = evaluation.evaluate(ctx, recipe.ANONYMISER_STAGES, recipe.METHOD_ROWS)
            if openset.applies(config):
                results["openset"] = openset.evaluate(ctx)
        runner.record(EVALUATE, time.perf_counter() - start)
        write_timing(workdir, EVALUATE, start, mark)
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
    to the time it ran before) and each stage's ``timing.json``."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.timings = load_timings(ctx.workdir)
        timing.install()

    def run(self, stage: Stage, *, stop_after: int | None = None) -> dict | None:
        """The stage's summary, training it first if it is not finished; None if ``stop_after`` stopped it. Another
        process training it is waited for."""
        with job_processes.stage_lock(self.ctx.workdir, stage.name):
            return self._train_held(stage, stop_after)

    def train_all(self, stages, *, stop_after: dict | None = None, parallel: bool = False) -> bool:
        """Trains every stage of ``stages`` (in run order) that is not finished, one after another; ``parallel``
        (other processes of this host share the workdir): takes, in ``critical_path_first`` order, the first stage
        whose inputs are finished and which no other process holds, until all are finished. False if ``stop_after``
        ({stage: steps}) stopped one."""
        if not parallel:  # (also every process of a multi-host run, in the same order)
            return all(self.run(stage, stop_after=(stop_after or {}).get(stage.name)) is not None
                       for stage in stages)
        workdir = self.ctx.workdir
        pending = [stage for stage in critical_path_first(self.ctx.config, stages)
                   if not is_complete(workdir, stage.name)]
        while pending:
            for stage in pending:
                if not all(is_complete(workdir, name) for name in dependencies(stage.name)):
                    continue
                with job_processes.stage_lock(workdir, stage.name, wait=False) as mine:
                    if mine and self._train_held(stage, (stop_after or {}).get(stage.name)) is None:
                        return False
                if mine:
                    break
            else:
                time.sleep(POLL_S)  # every stage left is held by another process or waits for one
            pending = [stage for stage in pending if not is_complete(workdir, stage.name)]
        return True

    def _train_held(self, stage: Stage, stop_after: int | None) -> dict | None:
        """``run`` with the stage's lock held."""
        workdir = self.ctx.workdir
        if not is_complete(workdir, stage.name):
            start, mark = time.perf_counter(), timing.snapshot()
            with timing.charged("steps"):
                train_stage(self.ctx, stage, stop_after=stop_after)
            if not is_complete(workdir, stage.name):
                return None
            self.record(stage.name, time.perf_counter() - start + self.timings.get(stage.name, 0.0))
            write_timing(workdir, stage.name, start, mark)
        return read_summary(workdir, stage.name)

    def record(self, name: str, seconds: float) -> None:
        self.timings = save_timings(self.ctx.workdir, {name: seconds})


def write_timing(workdir: Path, name: str, start: float, mark) -> None:
    """``<name>/timing.json``: the wall time since ``start``, the time by kind since ``mark`` (``timing.snapshot()``)
    and which process it was."""
    if jax.process_index() == 0:
        write_json_atomically(workdir / name / TIMING_FILE, {
            "stage": name, "wall_s": round(time.perf_counter() - start, 3),
            "process": job_processes.process_name(), **timing.since(mark)})


def load_timings(workdir: Path) -> dict:
    path = workdir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_timings(workdir: Path, timings: dict) -> dict:
    """Adds ``timings`` to the workdir's (other processes of ``reproduce --jobs`` add theirs); returns them all."""
    with job_processes.file_lock(workdir, "timings"):
        merged = {**load_timings(workdir), **timings}
        if jax.process_index() == 0:
            write_json_atomically(workdir / "timings.json", merged)
    return merged


def main(argv: list[str]) -> int:
    """A helper process of ``run --jobs`` (``python -m ppfer_jax.pipeline WORKDIR INDEX``, started by
    ``jobs.start_helpers``): trains the stages of the parent's config that no other process holds."""
    workdir = Path(argv[0])
    config = job_processes.start_helper(workdir, argv[1], "run")
    StageRunner(recipe.context(config, workdir, mesh_from_config(config))).train_all(recipe.stages_for(config),
                                                                                     parallel=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
