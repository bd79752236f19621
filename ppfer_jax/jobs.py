"""Several processes on one host sharing a workdir: ``ppfer-jax run --jobs N`` trains independent stages N at a time,
``ppfer-jax reproduce --jobs N`` also scores its rows N at a time.

On a CPU, XLA already spreads one process's larger steps over the cores; a second process adds throughput on the
small steps and runs while the first compiles, checkpoints or prepares data (benchmarks/RESULTS.md measures how
much). The processes coordinate through the workdir alone:

* a stage trains under an exclusive lock (``stage_lock``); whoever gets it second finds the stage finished and
  loads it, so a stage that rows share (a pretraining, a blur sigma's F_u) is trained once; ``StageRunner.train_all``
  takes only stages no one holds (``wait=False``);
* a row is scored by the process that holds its lock (``row_lock``, never waited for: a busy row is skipped);
* ``timings.json`` is merged under a lock, not overwritten (``pipeline.save_timings``).

Locks are ``flock``s, released when their process ends, so a killed job leaves nothing to clean up. Helpers are
``python -m <module> WORKDIR INDEX`` processes (``ppfer_jax.pipeline``'s, ``ppfer_jax.reproduce``'s) that read the
config the parent wrote to ``jobs/config.json`` and log to ``jobs/helper<INDEX>.log``; the parent takes over
whatever a failed helper left. Only a single-process run uses locks: across hosts, every process takes part in every
stage (collectives), so none may wait alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
from absl import flags

from data_pipelines.files import write_json_atomically
from ppfer_jax.bundle import with_tuples
from ppfer_jax.parallel import use_compilation_cache

JOBS_DIR = "jobs"
_HELPER_ENV = "PPFER_JAX_HELPER"  # set in a helper process: its index
JOBS_ENV = "PPFER_JAX_JOBS"  # the default --jobs


def default_jobs() -> int:
    """``$PPFER_JAX_JOBS`` if set (the test suite sets 1: its workers use the cores already); else two processes on a
    CPU host with two or more cores, one elsewhere: an accelerator is shared badly by two processes, and a
    multi-host run is one job already."""
    if os.environ.get(JOBS_ENV):
        return int(os.environ[JOBS_ENV])
    if jax.default_backend() == "cpu" and jax.process_count() == 1 and (os.cpu_count() or 1) >= 2:
        return 2
    return 1


def _lock_path(workdir: Path, name: str) -> Path:
    path = Path(workdir) / JOBS_DIR / "locks" / (name.replace("/", "+") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _flock(workdir: Path, name: str, *, wait: bool):
    """Holds the lock ``name`` of the workdir (True), or, with ``wait=False`` and the lock taken, yields False."""
    if jax.process_count() > 1:
        yield True
        return
    with open(_lock_path(workdir, name), "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def stage_lock(workdir: Path, stage_name: str, *, wait: bool = True):
    """Waits until no other process trains ``stage_name``; check whether it is finished after entering. With
    ``wait=False`` it yields at once whether this process got it."""
    return _flock(workdir, f"stage/{stage_name}", wait=wait)


def row_lock(workdir: Path, key: str):
    """Yields whether this process got the row ``key`` (another process scoring it: False, at once)."""
    return _flock(workdir, f"row/{key}", wait=False)


def file_lock(workdir: Path, name: str):
    """A short critical section over one of the workdir's shared files (``timings.json``)."""
    return _flock(workdir, f"file/{name}", wait=True)


def config_path(workdir: Path) -> Path:
    """Where the parent leaves its config for the helpers."""
    return Path(workdir) / JOBS_DIR / "config.json"


def start_helpers(config, workdir: Path, count: int, module: str, work: str) -> list[tuple[subprocess.Popen, Path]]:
    """``count`` helper processes ``python -m module WORKDIR INDEX`` doing ``work`` beside this one: (process, log)
    pairs. They read ``config`` from ``config_path`` (``start_helper``)."""
    if count < 1:
        return []
    directory = Path(workdir) / JOBS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomically(config_path(workdir), config.to_dict())
    env = dict(os.environ)
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    helpers = []
    for index in range(1, count + 1):
        log = directory / f"helper{index}.log"
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-m", module, str(workdir), str(index)],
                                       stdout=out, stderr=subprocess.STDOUT, env=env)
        helpers.append((process, log))
    print(f"{count} helper process{'es' if count > 1 else ''} {work} beside this one (logs: {directory}/helper*.log)")
    return helpers


def start_helper(workdir: Path, index: str, command: str):
    """A helper process's start: absl flags parsed (grain reads them), the compilation cache on, and the parent's
    config (from ``config_path``)."""
    flags.FLAGS.mark_as_parsed()
    use_compilation_cache()
    os.environ[_HELPER_ENV] = str(index)
    print(f"helper {index} of {command} in {workdir}", flush=True)
    return ml_collections.ConfigDict(with_tuples(json.loads(config_path(workdir).read_text())))


def process_name() -> str:
    """'main', or 'helper<INDEX>' in a helper process (what each stage's timing.json names)."""
    index = os.environ.get(_HELPER_ENV)
    return f"helper{index}" if index else "main"


def wait(helpers: list[tuple[subprocess.Popen, Path]]) -> None:
    """Waits for the helpers; says which failed (the parent then scores the rows they left)."""
    for index, (process, log) in enumerate(helpers, start=1):
        code = process.wait()
        if code != 0:
            print(f"helper {index} exited with code {code} (see {log}); what it left runs here")


def stop(helpers: list[tuple[subprocess.Popen, Path]]) -> None:
    """Ends the helpers (the parent failed or was interrupted); their finished stages and rows stay."""
    for process, _ in helpers:
        if process.poll() is None:
            process.terminate()
    for process, _ in helpers:
        process.wait()
