"""Processes sharing a workdir (``run --jobs``, ``reproduce --jobs``): locks across processes and merged timings."""

import multiprocessing
import time

from ppfer_jax import jobs, pipeline


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


def test_the_longest_chain_of_work_starts_first_and_every_stage_after_what_it_reads():
    """``run --jobs``' order: pretrain/expression heads the PPFER-robust chain (the longest: its privacy stage has
    the most steps), and no stage comes before a stage it reads."""
    from ppfer_jax.config import load_config
    from ppfer_jax.recipes import run

    order = [stage.name for stage in pipeline.critical_path_first(load_config("configs/synthetic.py"), run.STAGES)]
    assert order[:2] == ["pretrain/expression", "robust/privacy"]
    assert sorted(order) == sorted(stage.name for stage in run.STAGES)
    for position, name in enumerate(order):
        assert pipeline.dependencies(name) <= set(order[:position]), name
