"""Processes sharing a workdir (``reproduce --jobs``): locks across processes, merged timings, and which rows a
helper may take before the run is finished."""

import multiprocessing
import time

from ppfer_jax import jobs, pipeline, reproduce
from ppfer_jax.config import load_config
from ppfer_jax.recipes import run

from conftest import TINY


def _hold(workdir, kind, name, held, release):
    lock = jobs.stage_lock(workdir, name) if kind == "stage" else jobs.row_lock(workdir, name)
    with lock as mine:
        assert mine
        held.set()
        release.wait(30)
        time.sleep(1)
        (workdir / f"{name.replace('/', '_')}.done").write_text("x")


def _holding(workdir, kind, name):
    """A process holding the lock until told: (process, release event)."""
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    process = context.Process(target=_hold, args=(workdir, kind, name, held, release))
    process.start()
    assert held.wait(60)
    return process, release


def test_a_row_held_by_another_process_is_skipped_and_free_once_it_ends(tmp_path):
    process, release = _holding(tmp_path, "row", "blur1")
    with jobs.row_lock(tmp_path, "blur1") as mine:
        assert not mine
    with jobs.row_lock(tmp_path, "swap") as mine:  # another row is free
        assert mine
    release.set()
    process.join(60)
    with jobs.row_lock(tmp_path, "blur1") as mine:
        assert mine


def test_a_stage_lock_waits_for_the_process_training_it(tmp_path):
    process, release = _holding(tmp_path, "stage", "s1/privacy")
    release.set()  # the holder takes another second to finish, then lets go: entering waits for that
    with jobs.stage_lock(tmp_path, "s1/privacy"):
        assert (tmp_path / "s1_privacy.done").exists()
    process.join(60)


def test_timings_of_two_processes_are_merged(tmp_path):
    pipeline.save_timings(tmp_path, {"pretrain/identity": 3.0})
    merged = pipeline.save_timings(tmp_path, {"rows/swap/utility": 5.0})  # as another process would
    assert merged == {"pretrain/identity": 3.0, "rows/swap/utility": 5.0}
    assert pipeline.load_timings(tmp_path) == merged


class _Runner:
    """What ``build_row`` asks of a runner, without training anything."""

    def __init__(self, ctx):
        self.ctx = ctx

    def run(self, stage):
        return {"eval": {"acc": 0.0}}


def test_a_helper_takes_only_rows_that_read_no_more_of_the_run_than_its_pretraining(tmp_path):
    config = load_config(TINY)
    ctx = run.context(config, tmp_path, None, keep_originals=True, more_makers=reproduce.MAKERS)
    pretraining = {stage.name for stage in run.STAGES if stage.name.startswith("pretrain/")}
    produced = {stage.name for stage in run.STAGES}
    for key in reproduce.ROWS:
        if key in reproduce.AFTER_THE_RUN:
            continue
        row = reproduce.build_row(key, _Runner(ctx))
        own = {stage.name for stage in row.all_stages()}
        for stage in row.all_stages():
            read = {stage.source_of(n) for n in stage.frozen} | set(stage.init_from.values())
            assert read <= own | pretraining, (key, stage.name, read - own - pretraining)
            assert stage.name not in produced, (key, stage.name)  # trains nothing the run trains
