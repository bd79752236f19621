"""The training core on a toy CNN with BatchNorm: steps, logs, checkpoints, resume, selection, NaN, determinism."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_training import ToySource, fixed_batch, init_state, train_step

from data_pipelines.loader import make_iterator
from ppfer_jax.parallel import global_batch, make_mesh, step_rng
from ppfer_jax.training import (DONE_FILE, METRICS_FILE, abstract_state, compile_step, fit, is_complete,
                                load_best, read_summary)

STAGE = "toy/stage"


@functools.cache
def initializer(seed):
    """One init function per seed, so jax compiles it once for all the tests."""
    return lambda: init_state(seed)


def run(workdir, *, seed=0, num_steps=10, step_fn=train_step, init=None, **options):
    """fit() on the toy stage; the data, the init and the step keys all follow ``seed``."""
    options = {"checkpoint_every": 4, "log_every": 1, **options}
    return fit(STAGE, workdir, init_state=init or initializer(seed), step_fn=step_fn,
               train_data=make_iterator(ToySource(), batch_size=8, seed=seed), num_steps=num_steps,
               rng=jax.random.key(seed), mesh=make_mesh(), **options)


def records(workdir, split=None):
    """metrics.jsonl without its timing fields, which differ between runs by nature."""
    lines = (workdir / STAGE / METRICS_FILE).read_text().splitlines()
    parsed = [{k: v for k, v in json.loads(line).items() if k not in ("wall_time", "steps_per_sec")} for line in lines]
    return [record for record in parsed if split in (None, record["split"])]


def scalar_events(workdir):
    """The stage's TensorBoard scalars as TensorBoard's own reader sees them: {tag: [(step, value, wall_time)]}."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(workdir / STAGE)).Reload()
    return {tag: [(event.step, event.value, event.wall_time) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def scalars_in_metrics_log(workdir):
    """metrics.jsonl's finite numbers as the event files should hold them: float32, tagged <split>/<name>."""
    expected = {}
    for line in (workdir / STAGE / METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        extra = {k: v for k, v in record.items() if k not in ("step", "split", "metrics", "wall_time")}
        for name, value in {**record["metrics"], **extra}.items():
            if math.isfinite(value):
                expected.setdefault(f"{record['split']}/{name}", []).append(
                    (record["step"], float(np.float32(value)), record["wall_time"]))
    return expected


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def assert_trees_equal(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def peaking_eval(state):
    """A made-up eval metric that peaks at step 6."""
    return {"score": -float((int(state.step) - 6) ** 2)}


def test_one_step_reduces_the_loss_on_a_fixed_batch():
    mesh = make_mesh()
    step = compile_step(train_step, mesh)
    batch = global_batch(fixed_batch(), mesh)
    state, before = step(init_state(), batch, jax.random.key(0))
    _, after = step(state, batch, jax.random.key(0))
    assert float(after["loss"]) < float(before["loss"])


def test_compiled_step_on_a_one_device_mesh_equals_the_plain_step():
    mesh, root = make_mesh(), jax.random.key(3)
    plain_state, plain_metrics = train_step(init_state(), jax.tree.map(jnp.asarray, fixed_batch()),
                                            step_rng(root, 0))
    state, metrics = compile_step(train_step, mesh)(init_state(), global_batch(fixed_batch(), mesh),
                                                    step_rng(root, 0))
    for x, y in zip(leaves((state, metrics)), leaves((plain_state, plain_metrics)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert int(state.step) == 1


def test_fit_logs_checkpoints_and_marks_the_stage_done(tmp_path):
    state, summary = run(tmp_path, num_steps=6, log_every=2, eval_every=3, eval_fn=peaking_eval,
                         select=("score", "max"))
    train, evals = records(tmp_path, "train"), records(tmp_path, "eval")
    assert [r["step"] for r in train] == [2, 4, 6]
    assert set(train[0]["metrics"]) == {"loss", "accuracy", "batch_signature"}
    assert [(r["step"], r["metrics"]) for r in evals] == [(3, {"score": -9.0}), (6, {"score": 0.0})]
    assert is_complete(tmp_path, STAGE)
    assert read_summary(tmp_path, STAGE) == summary
    assert summary["step"] == 6 and summary["train"] == train[-1]["metrics"]
    assert summary["best"]["step"] == 6 and summary["eval"] == {"score": 0.0}
    assert int(state.step) == 6
    assert sorted(p.name for p in (tmp_path / STAGE / "checkpoints" / "latest").iterdir() if p.name.isdigit()) == ["6"]


def test_fit_writes_the_metrics_log_as_tensorboard_scalars(tmp_path):
    def eval_with_an_undefined_metric(state):
        return {**peaking_eval(state), "undefined": float("nan")}

    run(tmp_path, num_steps=6, log_every=2, eval_every=3, eval_fn=eval_with_an_undefined_metric)
    events = scalar_events(tmp_path)
    assert set(events) == {"train/loss", "train/accuracy", "train/batch_signature", "train/steps_per_sec",
                           "eval/score"}  # the NaN is left out
    assert [step for step, _, _ in events["train/loss"]] == [2, 4, 6]
    assert events["eval/score"][-1][:2] == (6, 0.0)
    assert events == scalars_in_metrics_log(tmp_path)


def test_fit_on_a_complete_stage_returns_the_stored_result_without_training(tmp_path):
    state, summary = run(tmp_path, num_steps=4)
    log_before = (tmp_path / STAGE / METRICS_FILE).read_text()

    def must_not_run(*args):
        raise AssertionError("a complete stage was trained again")

    again, summary_again = run(tmp_path, num_steps=4, step_fn=must_not_run)
    assert summary_again == summary
    assert_trees_equal(again, state)
    assert (tmp_path / STAGE / METRICS_FILE).read_text() == log_before
    with pytest.raises(ValueError, match="finished at step 4 but num_steps is 8"):
        run(tmp_path, num_steps=8)


@pytest.mark.parametrize("stop_after", [7, 2], ids=["past-a-checkpoint", "before-any-checkpoint"])
def test_resume_after_an_interrupt_is_bit_identical_to_an_uninterrupted_run(tmp_path, stop_after):
    evaluated_steps = []

    def recording_eval(state):
        evaluated_steps.append(int(state.step))
        return peaking_eval(state)

    options = dict(num_steps=10, checkpoint_every=4, eval_every=2, eval_fn=recording_eval, select=("score", "max"))
    whole_state, whole_summary = run(tmp_path / "whole", **options)

    interrupted = tmp_path / "interrupted"
    run(interrupted, stop_after=stop_after, **options)
    assert not is_complete(interrupted, STAGE)
    assert [r["step"] for r in records(interrupted, "train")] == list(range(1, stop_after + 1))
    before_resume = scalar_events(interrupted)
    assert [step for step, _, _ in before_resume["train/loss"]] == list(range(1, stop_after + 1))
    with (interrupted / STAGE / METRICS_FILE).open("a") as log:
        log.write('{"step": 3, "spl')  # a line torn by the kill
    evaluated_steps.clear()
    resumed_state, resumed_summary = run(interrupted, **options)

    last_checkpoint = stop_after // 4 * 4  # the resumed call starts there and recomputes the rest
    assert evaluated_steps == list(range(last_checkpoint + 2, 11, 2))

    assert_trees_equal(resumed_state, whole_state)
    assert resumed_summary == whole_summary
    # batch_signature fingerprints the examples of every step, so equal records mean the same batches in order
    assert records(interrupted) == records(tmp_path / "whole")
    # TensorBoard sees each recomputed step once, with the resumed run's record (its wall time), as metrics.jsonl
    after_resume = scalar_events(interrupted)
    assert after_resume == scalars_in_metrics_log(interrupted)
    assert [step for step, _, _ in after_resume["train/loss"]] == list(range(1, 11))
    assert after_resume["train/loss"][:last_checkpoint] == before_resume["train/loss"][:last_checkpoint]
    assert after_resume["train/loss"][stop_after - 1][2] != before_resume["train/loss"][stop_after - 1][2]
    assert len(list((interrupted / STAGE).glob("events.out.tfevents.*"))) == 2
    assert int(load_best(interrupted, STAGE, abstract_state(init_state, resumed_state.step.sharding)).step) == 6


def test_patience_stops_past_a_plateau_and_the_best_state_is_that_of_a_full_run(tmp_path):
    """peaking_eval is best at step 6; with patience 2 and an evaluation every 2 steps the stage stops at step 10
    of 20, finished, with the best checkpoint (what downstream stages load) equal to the full run's."""
    options = dict(num_steps=20, eval_every=2, eval_fn=peaking_eval, select=("score", "max"))
    _, full = run(tmp_path / "full", **options)
    state, summary = run(tmp_path / "stopped", patience=2, **options)
    assert int(state.step) == 10 and summary["step"] == 10 and summary["stopped_at_plateau"]
    assert is_complete(tmp_path / "stopped", STAGE) and not full["stopped_at_plateau"]
    assert summary["best"] == full["best"] and summary["best"]["step"] == 6
    assert [r["step"] for r in records(tmp_path / "stopped", "eval")] == [2, 4, 6, 8, 10]
    target = abstract_state(init_state, state.step.sharding)
    assert_trees_equal(load_best(tmp_path / "stopped", STAGE, target), load_best(tmp_path / "full", STAGE, target))
    again, summary_again = run(tmp_path / "stopped", patience=2, **options)  # finished: not trained further
    assert int(again.step) == 10 and summary_again == summary


def test_patience_resumed_after_an_interrupt_stops_where_an_uninterrupted_run_does(tmp_path):
    options = dict(num_steps=20, eval_every=2, eval_fn=peaking_eval, select=("score", "max"), patience=2)
    _, whole = run(tmp_path / "whole", **options)
    run(tmp_path / "interrupted", stop_after=9, **options)  # last checkpoint at 8: after the best (6)
    assert not is_complete(tmp_path / "interrupted", STAGE)
    _, resumed = run(tmp_path / "interrupted", **options)
    assert resumed == whole and whole["step"] == 10


def test_best_checkpoint_is_the_state_at_the_best_evaluation(tmp_path):
    params_by_step = {}

    def eval_remembering_params(state):
        params_by_step[int(state.step)] = jax.device_get(state.params)
        return peaking_eval(state)

    final, summary = run(tmp_path, num_steps=10, eval_every=2, eval_fn=eval_remembering_params,
                         select=("score", "max"))
    assert summary["best"] == {"step": 6, "value": 0.0, "metrics": {"score": 0.0}}
    best = load_best(tmp_path, STAGE, abstract_state(init_state, final.step.sharding))
    assert int(best.step) == 6
    assert_trees_equal(best.params, params_by_step[6])
    assert sorted(p.name for p in (tmp_path / STAGE / "checkpoints" / "best").iterdir() if p.name.isdigit()) == ["6"]


def test_best_checkpoint_can_minimise(tmp_path):
    _, summary = run(tmp_path, num_steps=6, eval_every=1, eval_fn=lambda state: {"error": abs(int(state.step) - 4)},
                     select=("error", "min"))
    assert summary["best"]["step"] == 4


def test_a_nan_loss_stops_the_stage_naming_it_and_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    def nan_at_step_3(state, batch, rng):
        state, metrics = train_step(state, batch, rng)
        return state, {**metrics, "loss": jnp.where(state.step == 3, jnp.nan, metrics["loss"])}

    # NaN at step 3 is found at the log of step 4, before step 4's checkpoint would be written
    with pytest.raises(FloatingPointError, match=r"stage 'toy/stage', step 3: train metric 'loss' is nan"):
        run(tmp_path, step_fn=nan_at_step_3, log_every=2, checkpoint_every=2)
    assert not is_complete(tmp_path, STAGE)
    kept = load_best(tmp_path, STAGE, abstract_state(init_state, jax.sharding.SingleDeviceSharding(jax.devices()[0])))
    assert int(kept.step) == 2
    assert all(np.isfinite(leaf).all() for leaf in leaves(kept.params))


@pytest.mark.parametrize("eval_fn, error, message", [
    (lambda state: {"score": float("nan")}, FloatingPointError,
     "stage 'toy/stage', step 2: eval metric 'score' is nan"),
    (lambda state: {"other": 1.0}, KeyError, r"eval_fn returned no 'score' to select on; it returned \['other'\]"),
], ids=["nan", "missing"])
def test_an_unusable_selection_metric_stops_the_stage(tmp_path, eval_fn, error, message):
    with pytest.raises(error, match=message):
        run(tmp_path, num_steps=4, eval_every=2, eval_fn=eval_fn, select=("score", "max"))


def test_frozen_variables_are_checkpointed_and_come_back_unchanged(tmp_path):
    teacher = jax.device_get(init_state(seed=5).params)

    @functools.cache
    def with_teacher():
        return init_state().replace(frozen={"teacher": teacher})

    options = dict(num_steps=6, checkpoint_every=4)
    run(tmp_path, init=with_teacher, stop_after=5, **options)
    final, _ = run(tmp_path, init=with_teacher, **options)
    assert_trees_equal(final.frozen, {"teacher": teacher})


def test_same_seed_gives_identical_params_and_another_seed_differs(tmp_path):
    first, _ = run(tmp_path / "a", num_steps=3, seed=0)
    second, _ = run(tmp_path / "b", num_steps=3, seed=0)
    other, _ = run(tmp_path / "c", num_steps=3, seed=1)
    assert_trees_equal(first.params, second.params)
    assert not np.array_equal(leaves(first.params)[0], leaves(other.params)[0])


def test_a_step_that_does_not_advance_the_step_counter_is_rejected(tmp_path):
    def forgetful(state, batch, rng):
        new_state, metrics = train_step(state, batch, rng)
        return new_state.replace(step=state.step), metrics

    with pytest.raises(ValueError, match="state.step is 0 after 4 steps"):
        run(tmp_path, step_fn=forgetful)


@pytest.mark.parametrize("options, message", [
    (dict(checkpoint_every=5, log_every=2), "must be a multiple of log_every"),
    (dict(select=("loss", "max")), "need an eval_fn"),
    (dict(eval_fn=peaking_eval, select=("score", "best")), "'min' | 'max'"),
    (dict(num_steps=0), "num_steps must be a positive"),
    (dict(eval_fn=peaking_eval, eval_every=0), "eval_every must be a positive"),
    (dict(eval_fn=peaking_eval, eval_every=2, patience=2), "patience .* needs select and eval_every"),
])
def test_schedules_that_cannot_run_or_resume_exactly_are_rejected(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, **options)
    assert not (tmp_path / STAGE / DONE_FILE).exists()



def test_load_best_of_a_stage_without_checkpoints_says_so_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="stage 'toy/stage' has no checkpoint"):
        load_best(tmp_path, STAGE, abstract_state(init_state, jax.sharding.SingleDeviceSharding(jax.devices()[0])))
    assert not (tmp_path / STAGE).exists()
