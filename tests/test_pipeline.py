"""`ppfer-jax run` end to end on the tiny config: report structure, resume, determinism, frozen nets, errors."""

import json
import shutil

import jax
import numpy as np
import pytest

from ppfer_jax import cli, pipeline
from ppfer_jax.config import load_config
from ppfer_jax.methods import ppfer, registry
from ppfer_jax.parallel import make_mesh

TINY = "configs/synthetic.py:tiny"
# Checkpoints every 5 steps so that a stage stopped after 7 resumes from step 5.
OVERRIDES = ["train.log_every=5", "train.checkpoint_every=5"]
INTERRUPT = {"s1/privacy": 7}


def tiny_config(extra=()):
    return load_config(TINY, [*OVERRIDES, *extra])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny pipeline, recording which splits each stage reads (the evaluation is stage None)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    reads, current = [], [None]

    def recording_load_split(config, split):
        reads.append((current[0], split))
        return load_split(config, split)

    def recording_run_stage(ctx, stage, **kwargs):
        current[0] = stage.name
        try:
            return run_stage(ctx, stage, **kwargs)
        finally:
            current[0] = None

    load_split, run_stage = ppfer.load_split, ppfer.run_stage
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppfer, "load_split", recording_load_split)
        patch.setattr(ppfer, "run_stage", recording_run_stage)
        report = pipeline.run(tiny_config(), workdir)
    return workdir, report, reads


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Stopped inside s1/privacy (after step 7, last checkpoint at 5), then run again to the end."""
    workdir = tmp_path_factory.mktemp("interrupted")
    assert pipeline.run(tiny_config(), workdir, stop_after=INTERRUPT) is None
    assert not (workdir / "s1/privacy/DONE.json").exists()
    done_before = {name: (workdir / name / "DONE.json").stat().st_mtime_ns
                   for name in ("pretrain/identity", "pretrain/enhancer", "pretrain/expression")}
    report = pipeline.run(tiny_config(), workdir)
    return workdir, report, done_before


def test_pipeline_runs_end_to_end_and_writes_the_tables(uninterrupted):
    workdir, report, _ = uninterrupted
    on_disk = json.loads((workdir / "report.json").read_text())
    results = on_disk["results"]
    rows = ("no_privacy", "ppfer", "ppfer_robust")
    assert set(results["table1"]) == set(rows)
    for row in results["table1"].values():
        assert set(row) == {"plr", "plr_permuted", "adaptive_plr", "adaptive_plr_clip", "acc"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
        assert row["plr_permuted"] >= row["plr"]  # the identity labelling is one of the relabellings tried
    assert all(len(results["table2"][row]) == 6 for row in rows)
    for method in ("ppfer", "ppfer_robust"):
        assert set(results["fidelity"][method]) == {"ssim", "psnr", "ssim_g", "psnr_g"}
        assert -1.0 <= results["fidelity"][method]["ssim"] <= 1.0
    assert set(results["attackers"]) == {"frozen validator V_pl", "adaptive frame attacker", "adaptive clip attacker",
                                         "relabelling check"}
    assert 0.0 <= results["robust_selection"]["held-out ridge attacker on G (val)"] <= 1.0
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
    assert by_stage[None] == {"test"}  # evaluate
    assert by_stage["s1/privacy"] == {"train", "val"}  # trains on train, selects its checkpoint on val
    assert by_stage["pretrain/expression"] == {"wild", "val"}
    assert not any("test" in splits for stage, splits in by_stage.items() if stage is not None)


def test_interrupted_run_resumes_to_the_same_numbers_without_redoing_finished_stages(uninterrupted, interrupted):
    """Also the determinism check: two runs of the same config and seed give the same report numbers."""
    (_, report, _), (workdir, resumed, done_before) = uninterrupted, interrupted
    assert resumed["results"] == report["results"]
    for name, mtime in done_before.items():
        assert (workdir / name / "DONE.json").stat().st_mtime_ns == mtime, f"{name} was re-run"


def test_a_finished_workdir_is_not_retrained(uninterrupted, monkeypatch):
    workdir, report, _ = uninterrupted
    monkeypatch.setattr(ppfer, "run_stage", lambda *a, **k: pytest.fail("a finished stage was trained again"))
    again = pipeline.run(tiny_config(), workdir, make_figure=False)
    assert again["results"] == report["results"]


def test_frozen_networks_are_bit_identical_to_their_producers(uninterrupted):
    workdir, _, _ = uninterrupted
    ctx = ppfer.Context(tiny_config(), workdir, make_mesh())
    for stage in registry.STAGES:
        if not stage.frozen:
            continue
        state = ctx.load(stage.name)
        for name in stage.frozen:
            producer = registry.STAGE_BY_NAME[stage.source_of(name)]
            expected = ctx.network(name, producer.name)
            got = state.frozen[name]
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                              err_msg=f"{name} in {stage.name} differs from {producer.name}")


def test_rerun_of_a_stage_also_reruns_what_reads_it():
    assert pipeline.downstream("s1/privacy") == ["s1/privacy", "s2/compensation", "s3/utility",
                                                 "attack/adaptive", "attack/clip", "evaluate"]
    assert pipeline.downstream("robust/privacy") == ["robust/privacy", "robust/compensation", "robust/utility",
                                                     "robust/attack_adaptive", "robust/attack_clip", "evaluate"]
    assert pipeline.downstream("no_privacy") == ["no_privacy", "evaluate"]
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


def test_nan_loss_stops_with_a_clear_message(tmp_path, capsys):
    code = cli.main(["run", "--config", TINY, "--workdir", str(tmp_path), *[f"--config.{o}" for o in OVERRIDES],
                     "--config.train.pretrain_identity.learning_rate=1e38"])
    assert code == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "pretrain/identity" in err and "learning_rate" in err
    assert not (tmp_path / "pretrain/identity/DONE.json").exists()


def test_anonymised_split_is_the_trained_chain_output_stored_as_uint8(uninterrupted):
    workdir, _, _ = uninterrupted
    ctx = ppfer.Context(tiny_config(), workdir, make_mesh())
    raw, anonymised = ctx.source("test"), ctx.source("test", anonymised="ppfer")
    video = anonymised.arrays["video"]
    assert video.dtype == np.uint8 and video.shape == raw.arrays["video"].shape
    for field in ("identity", "expression", "eval_frame"):
        np.testing.assert_array_equal(anonymised.arrays[field], raw.arrays[field])
    frozen = {n: ctx.network(n, stage) for n, stage in ppfer.ANONYMISER_STAGES.items()}
    direct = np.asarray(ppfer.to_uint8(ppfer.compensated_clips(ctx.nets, frozen, raw.arrays["video"][:4])))
    # Same function at another batch size: equal up to one grey level where float rounding differs.
    assert np.max(np.abs(direct.astype(int) - video[:4].astype(int))) <= 1
    assert np.mean(direct == video[:4]) > 0.99
    assert np.mean(np.abs(video.astype(int) - raw.arrays["video"].astype(int))) > 5  # not the raw clips


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedules(schedule):
    config = tiny_config([f"train.utility.schedule={schedule}"])
    tx = ppfer.optimizer_for(config, config.train.utility)
    params = {"w": jax.numpy.ones(3)}
    first, _ = tx.update({"w": jax.numpy.ones(3)}, tx.init(params), params)
    # Cosine warms up from 0, so its first update is exactly zero; constant Adam moves by lr at once.
    expected = 0.0 if schedule == "cosine" else config.train.utility.learning_rate
    np.testing.assert_allclose(np.abs(first["w"]), expected, rtol=1e-5)


def test_unknown_schedule_names_the_config_key():
    config = tiny_config(["train.utility.schedule=linear"])
    with pytest.raises(ValueError, match="schedule"):
        ppfer.optimizer_for(config, config.train.utility)
