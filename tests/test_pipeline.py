"""`ppfer-jax run` end to end on the tiny config: report structure, resume, determinism, frozen nets, errors.

The uninterrupted run is the session's tiny run (conftest), made without the checkpoint overrides the
interrupted run needs; checkpoint and log frequencies change no number."""

import json
import shutil

import jax
import numpy as np
import pytest

from ppfer_jax import cli, pipeline
from ppfer_jax.config import load_config
from ppfer_jax.nets import compensated_clips, to_uint8
from ppfer_jax.recipes import run
from ppfer_jax.stage import optimizer_for
from ppfer_jax.parallel import make_mesh

TINY = "configs/synthetic.py:tiny"
# Checkpoints every 5 steps so that a stage stopped after 7 resumes from step 5.
OVERRIDES = ["train.log_every=5", "train.checkpoint_every=5"]
INTERRUPT = {"s1/privacy": 7}


def tiny_config(extra=()):
    return load_config(TINY, [*OVERRIDES, *extra])


@pytest.fixture(scope="module")
def uninterrupted(tiny_run_and_reads):
    """The session's tiny run (conftest), with the splits each of its stages read."""
    return tiny_run_and_reads


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Stopped inside s1/privacy (after step 7, last checkpoint at 5), then run again to the end by two processes
    (``--jobs 2``: this one and a helper); the uninterrupted run is one process."""
    workdir = tmp_path_factory.mktemp("interrupted")
    assert pipeline.run(tiny_config(), workdir, stop_after=INTERRUPT) is None
    assert not (workdir / "s1/privacy/DONE.json").exists()
    done_before = {name: (workdir / name / "DONE.json").stat().st_mtime_ns
                   for name in ("pretrain/identity", "pretrain/enhancer", "pretrain/expression")}
    report = pipeline.run(tiny_config(), workdir, jobs=2)
    return workdir, report, done_before


def test_pipeline_runs_end_to_end_and_writes_the_tables(uninterrupted):
    workdir, report, _ = uninterrupted
    on_disk = json.loads((workdir / "report.json").read_text())
    results = on_disk["results"]
    rows = ("no_privacy", "ppfer", "ppfer_robust")
    clips = results["num_test_clips"]
    assert set(results["table1"]) == set(rows)
    for row in results["table1"].values():
        assert set(row) == {"plr", "plr_permuted", "adaptive_plr", "adaptive_plr_clip", "acc"}
        for value in row.values():  # each a share of the test clips: a whole number of them
            assert value * clips == pytest.approx(round(value * clips), abs=1e-6), row
        assert row["plr_permuted"] >= row["plr"]  # the identity labelling is one of the relabellings tried
    for row in rows:  # balanced classes: ACC is the mean of the per-class accuracies
        assert len(results["table2"][row]) == 6
        assert np.mean(results["table2"][row]) == pytest.approx(results["table1"][row]["acc"])
    for method in ("ppfer", "ppfer_robust"):
        fidelity = results["fidelity"][method]
        assert set(fidelity) == {"ssim", "psnr", "ssim_g", "psnr_g"}
        assert fidelity["ssim"] < 1.0 and fidelity["ssim_g"] < 1.0  # the anonymiser changed the frames
        assert np.isfinite(fidelity["psnr"]) and np.isfinite(fidelity["psnr_g"])
    assert set(results["attackers"]) == {"frozen validator V_pl", "adaptive frame attacker", "adaptive clip attacker",
                                         "relabelling check"}
    chosen = json.loads((workdir / "robust/privacy/DONE.json").read_text())["best"]  # the report names the choice
    assert results["robust_selection"]["held-out ridge attacker on the code (val)"] == \
        chosen["metrics"]["held_out_attacker_acc"]
    assert results["chance_plr"] == pytest.approx(1 / 6)
    assert set(results["controllers_clean_accuracy"]) == {"C_lpr (low band)", "C_hpr (high band)", "V_pl (frames)",
                                                          "V_sel (frames; chooses s1's checkpoint)"}
    assert (workdir / "report.md").read_text().startswith("# PPFER report")
    assert (workdir / "report.png").stat().st_size > 0
    for name in pipeline.STAGE_NAMES[:-1]:
        assert (workdir / name / "DONE.json").exists()
    # Privacy is doing something: V_pl reads fewer identities from C than from the raw frames.
    assert results["table1"]["ppfer"]["plr"] < results["table1"]["no_privacy"]["plr"]


def test_only_the_final_evaluation_reads_the_test_split(uninterrupted):
    *_, reads = uninterrupted
    by_stage = {}
    for stage, split in reads:
        by_stage.setdefault(stage, set()).add(split)
    assert by_stage[None] == {"test", "val", "openset_score"}  # evaluate (val: the verifier's threshold)
    assert by_stage["s1/privacy"] == {"train", "val"}  # trains on train, selects its checkpoint on val
    assert by_stage["pretrain/expression"] == {"wild", "val"}
    assert not any("test" in splits for stage, splits in by_stage.items() if stage is not None)


def test_interrupted_run_resumes_to_the_same_numbers_without_redoing_finished_stages(uninterrupted, interrupted):
    """Also the determinism check: two runs of the same config and seed give the same report numbers, one of them
    trained by two processes at once."""
    (first, report, _), (workdir, resumed, done_before) = uninterrupted, interrupted
    assert resumed["results"] == report["results"]
    for name, mtime in done_before.items():
        assert (workdir / name / "DONE.json").stat().st_mtime_ns == mtime, f"{name} was re-run"
    by_process = {}
    for name in pipeline.STAGE_NAMES[:-1]:
        if name not in done_before:
            by_process.setdefault(json.loads((workdir / name / "timing.json").read_text())["process"], []).append(name)
        summary, alone = (json.loads((w / name / "DONE.json").read_text()) for w in (workdir, first))
        assert summary["eval"] == alone["eval"] and summary["best"] == alone["best"], name
    assert set(by_process) == {"main", "helper1"}, by_process  # both processes trained stages


def test_each_stage_times_its_compiles_steps_evaluations_and_data(uninterrupted):
    workdir, *_ = uninterrupted
    for name in pipeline.STAGE_NAMES[:-1]:
        timing = json.loads((workdir / name / "timing.json").read_text())
        seconds = timing["seconds"]
        assert seconds["steps"] > 0 and seconds["compile"] > 0, (name, seconds)
        assert sum(seconds.values()) == pytest.approx(timing["wall_s"], rel=0.02, abs=0.05), (name, seconds)
        assert all(c["seconds"] >= 0 and isinstance(c["cached"], bool) for c in timing["compiles"])
    assert "evaluate" in json.loads((workdir / "s1/privacy/timing.json").read_text())["seconds"]


def test_a_finished_workdir_is_not_retrained(uninterrupted, monkeypatch):
    workdir, report, _ = uninterrupted
    monkeypatch.setattr(pipeline, "train_stage", lambda *a, **k: pytest.fail("a finished stage was trained again"))
    again = pipeline.run(load_config(TINY), workdir, make_figure=False)
    assert again["results"] == report["results"]


def test_frozen_networks_are_bit_identical_to_their_producers(uninterrupted):
    workdir, _, _ = uninterrupted
    ctx = run.context(load_config(TINY), workdir, make_mesh())
    for stage in run.STAGES:
        if not stage.frozen:
            continue
        state = ctx.load(stage.name)
        for name in stage.frozen:
            producer = run.STAGE_BY_NAME[stage.source_of(name)]
            expected = ctx.network(name, producer.name)
            got = state.frozen[name]
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                              err_msg=f"{name} in {stage.name} differs from {producer.name}")


def test_rerun_of_a_stage_also_reruns_what_reads_it():
    assert pipeline.downstream("s1/privacy") == ["s1/privacy", "s2/compensation", "s3/utility",
                                                 "attack/adaptive", "attack/clip", "openset/ppfer/attack_adaptive",
                                                 "openset/ppfer/attack_clip", "evaluate"]
    assert pipeline.downstream("robust/privacy") == ["robust/privacy", "robust/compensation", "robust/utility",
                                                     "robust/attack_adaptive", "robust/attack_clip",
                                                     "openset/ppfer_robust/attack_adaptive",
                                                     "openset/ppfer_robust/attack_clip", "evaluate"]
    assert pipeline.downstream("no_privacy") == ["no_privacy", "evaluate"]
    assert pipeline.downstream("openset/no_privacy/attack_clip") == ["openset/no_privacy/attack_clip", "evaluate"]
    assert pipeline.downstream("pretrain/identity")[-1] == "evaluate"


def test_cli_rejects_an_unknown_config_key(tmp_path, capsys):
    code = cli.main(["run", "--config", TINY, "--workdir", str(tmp_path), "--config.train.privacy.stepz=3"])
    assert code == 2
    assert "unknown config key 'train.privacy.stepz'" in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()


def test_cli_rejects_a_workdir_holding_another_config(uninterrupted, tmp_path, capsys):
    workdir, _, _ = uninterrupted
    shutil.copy(workdir / "config.json", tmp_path / "config.json")
    code = cli.main(["run", "--config", TINY, "--workdir", str(tmp_path), *[f"--config.{o}" for o in OVERRIDES],
                     "--config.privacy.objective=entropy"])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds results of a different config" in err and "privacy.objective" in err
    assert not (tmp_path / "pretrain").exists()


def test_cli_rejects_an_unknown_stage(tmp_path, capsys):
    assert cli.main(["run", "--config", TINY, "--workdir", str(tmp_path), "--stage", "s9/nothing"]) == 2
    assert "is not a stage" in capsys.readouterr().err


@pytest.mark.slow  # a run until it diverges
def test_nan_loss_stops_with_a_clear_message(tmp_path, capsys):
    code = cli.main(["run", "--config", TINY, "--workdir", str(tmp_path), *[f"--config.{o}" for o in OVERRIDES],
                     "--config.train.pretrain_identity.learning_rate=1e38"])
    assert code == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "pretrain/identity" in err and "learning_rate" in err
    assert not (tmp_path / "pretrain/identity/DONE.json").exists()


def test_anonymised_split_is_the_trained_chain_output_stored_as_uint8(uninterrupted):
    workdir, _, _ = uninterrupted
    ctx = run.context(load_config(TINY), workdir, make_mesh())
    raw, anonymised = ctx.source("test"), ctx.source("test", "ppfer")
    video = anonymised.arrays["video"]
    assert video.dtype == np.uint8 and video.shape == raw.arrays["video"].shape
    for field in ("identity", "expression", "eval_frame"):
        np.testing.assert_array_equal(anonymised.arrays[field], raw.arrays[field])
    frozen = {n: ctx.network(n, stage) for n, stage in run.ANONYMISER_STAGES["ppfer"].items()}
    direct = np.asarray(to_uint8(compensated_clips(ctx.nets, frozen, raw.arrays["video"][:4])))
    # Same function at another batch size: equal up to one grey level where float rounding differs.
    assert np.max(np.abs(direct.astype(int) - video[:4].astype(int))) <= 1
    assert np.mean(direct == video[:4]) > 0.99
    assert np.mean(np.abs(video.astype(int) - raw.arrays["video"].astype(int))) > 5  # not the raw clips


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedules(schedule):
    config = tiny_config([f"train.utility.schedule={schedule}"])
    tx = optimizer_for(config, config.train.utility)
    params = {"w": jax.numpy.ones(3)}
    first, _ = tx.update({"w": jax.numpy.ones(3)}, tx.init(params), params)
    # Cosine warms up from 0, so its first update is exactly zero; constant Adam moves by lr at once.
    expected = 0.0 if schedule == "cosine" else config.train.utility.learning_rate
    np.testing.assert_allclose(np.abs(first["w"]), expected, rtol=1e-5)


def test_unknown_schedule_names_the_config_key():
    config = tiny_config(["train.utility.schedule=linear"])
    with pytest.raises(ValueError, match="schedule"):
        optimizer_for(config, config.train.utility)
