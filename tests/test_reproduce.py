"""`ppfer-jax reproduce` on the tiny config: every baseline, the recovery attacker and one ablation through the
shared stages, with a report holding every row and column."""

import json
import math
import shutil

import numpy as np
import pytest

from ppfer_jax import pipeline, reproduce, verification
from ppfer_jax.baselines import blur
from ppfer_jax.config import load_config
from ppfer_jax.parallel import mesh_from_config
from ppfer_jax.recipes import run

from conftest import TINY

ROWS = ["no_privacy", "blur1", "blur2", "tradeoff", "optical_flow", "swap", "pprl_vgan", "narula", "open_set_priors",
        "ppfer", "task1"]


def _config():
    config = load_config(TINY)
    config.suite.rows = ROWS
    return config


@pytest.fixture(scope="module")
def reproduced(tiny_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("suite") / "run"
    shutil.copytree(tiny_run, workdir)  # the PPFER stages are done: reproduce reuses them
    return workdir, reproduce.reproduce(_config(), workdir, jobs=2)  # a helper process scores rows beside


def _counted(value: float, total: int) -> bool:
    """A share of ``total`` examples: a whole number of them."""
    return value * total == pytest.approx(round(value * total), abs=1e-6)


def test_every_row_is_counted_on_the_test_clips_and_written(reproduced):
    workdir, result = reproduced
    clips = result["num_test_clips"]
    per_class_clips = clips // 6  # the tiny test split holds each expression equally often
    assert list(result["rows"]) == ROWS
    for key, row in result["rows"].items():
        assert row["status"] == "ok", key
        for column in ("plr", "plr_permuted", "acc"):  # shares of the test clips
            assert _counted(row[column], clips), (key, column, row[column])
        assert row["plr_permuted"] >= row["plr"]  # the identity labelling is one of the relabellings tried
        assert len(row["per_class"]) == 6 and all(_counted(x, per_class_clips) for x in row["per_class"])
        assert np.mean(row["per_class"]) == pytest.approx(row["acc"])  # balanced classes: ACC is their mean
        if key not in ("no_privacy", "task1"):  # ablations skip the attackers (suite.ablation_attacks)
            assert _counted(row["adaptive_plr"], clips) and _counted(row["adaptive_plr_clip"], clips), key
            recovery = row["recovery"]
            assert recovery["ssim"] < 1.0 and math.isfinite(recovery["psnr"]), key
            assert _counted(recovery["plr"], clips), key
        if key != "no_privacy":  # every method changes the frames: SSIM below 1, a finite PSNR
            assert row["ssim"] < 1.0 and math.isfinite(row["psnr"]), key
        check = row["verification"]  # the open-set check, for every row
        for share in ("same_clip_reject", "same_person_reject"):
            assert 0.0 <= check[share] <= 1.0, (key, share)
        assert 0.0 <= check["auc"] <= 1.0, key
    assert "emotion-only" in result["rows"]["narula"]["note"]  # the abstract's two reference CNNs are reported
    assert "identity-only" in result["rows"]["narula"]["note"]
    markdown = (workdir / "suite_report.md").read_text()
    assert "Open-set verification" in markdown
    for row in result["rows"].values():
        assert row["label"] in markdown
    stored = json.loads((workdir / "suite_report.json").read_text())
    assert stored["rows"]["blur1"]["plr"] == result["rows"]["blur1"]["plr"]
    for figure in ("privacy_utility.png", "methods_frames.png"):
        assert (workdir / figure).stat().st_size > 1000


def test_blur_sigmas_match_their_targets_within_the_stated_tolerance(reproduced):
    workdir, result = reproduced
    config = _config().baselines.blur
    for key, tolerance in (("blur1", config.plr_tolerance), ("blur2", config.acc_tolerance)):
        search = result["blur_search"][key]
        sigma = blur.sigma_of(blur.method_name(search["x"]))
        assert f"sigma = {sigma:.3g} px" in result["rows"][key]["note"]
        if not search["bracketed"]:
            # The target lies outside [f(lo), f(hi)]: only the two ends were tried and the nearer one is reported.
            (lo, f_lo), (hi, f_hi) = search["history"]
            assert (lo, hi) == tuple(config.sigma_range)
            assert not min(f_lo, f_hi) <= search["target"] <= max(f_lo, f_hi)
            nearer = (lo, f_lo) if abs(f_lo - search["target"]) < abs(f_hi - search["target"]) else (hi, f_hi)
            assert (search["x"], search["value"]) == nearer
            continue
        (x_lo, f_lo), (x_hi, f_hi) = search["bracket"]
        assert min(f_lo, f_hi) <= search["target"] <= max(f_lo, f_hi)
        # Within tolerance, or the whole evaluation budget spent narrowing a bracket the target lies in.
        if abs(search["value"] - search["target"]) > tolerance:
            assert not search["converged"]
            assert len(search["history"]) == getattr(config, key.replace("blur1", "plr").replace("blur2", "acc")
                                                     + "_evaluations")
    # The reported Blur 1 value is V_pl's val PLR at the reported sigma, measured again here.
    ctx = run.context(_config(), workdir, mesh_from_config(_config()))
    search = result["blur_search"]["blur1"]
    assert blur.val_plr(ctx, blur.sigma_of(blur.method_name(search["x"]))) == pytest.approx(search["value"])


def test_a_finished_suite_is_read_back_without_training(reproduced, monkeypatch):
    workdir, result = reproduced

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(pipeline, "train_stage", no_training)
    (workdir / "methods_frames.png").unlink()
    again = reproduce.reproduce(_config(), workdir, jobs=1)  # the frame grid loads every row's networks afresh
    for key in ROWS:
        assert again["rows"][key]["acc"] == result["rows"][key]["acc"]
    assert (workdir / "methods_frames.png").exists()


def test_a_row_its_helper_scored_has_the_numbers_of_one_process(reproduced, tiny_run, tmp_path):
    workdir, result = reproduced
    helped = [key for key in ROWS if f"== {key}" in (workdir / "jobs" / "helper1.log").read_text()]
    assert "task1" in helped and "no_privacy" not in helped  # the helper takes from the end, rows past the run's
    alone = tmp_path / "run"
    shutil.copytree(tiny_run, alone)
    config = _config()
    config.suite.rows = ["task1"]
    again = reproduce.reproduce(config, alone, jobs=1, make_figures=False)["rows"]["task1"]
    for key in ("plr", "plr_permuted", "acc", "ssim", "psnr"):
        assert again[key] == result["rows"]["task1"][key], key


def test_the_oracle_swap_keeps_the_motion_and_replaces_every_face(reproduced):
    workdir, _ = reproduced
    config = _config()
    ctx = run.context(config, workdir, mesh_from_config(config), keep_originals=True, more_makers=reproduce.MAKERS)
    swapped = ctx.source("test", "swap", with_originals=True).arrays
    raw = ctx.source("test").arrays
    np.testing.assert_array_equal(swapped["original"], raw["video"])
    for field in ("identity", "expression", "eval_frame"):
        np.testing.assert_array_equal(swapped[field], raw[field])
    # Two clips of different people become clips of the same person: their first frames grow closer.
    first = swapped["video"][:, 0].astype(np.float32)
    people = raw["identity"]
    a, b = int(np.argmax(people == people[0])), int(np.argmax(people != people[0]))
    raw_gap = np.abs(raw["video"][a, 0].astype(np.float32) - raw["video"][b, 0]).mean()
    assert np.abs(first[a] - first[b]).mean() < raw_gap


def test_the_verifier_matches_raw_faces_and_nothing_in_noise(reproduced):
    workdir, result = reproduced
    raw = result["rows"]["no_privacy"]["verification"]
    assert raw["same_clip_reject"] == 0.0  # a frame matches itself
    assert raw["auc"] > 0.85  # the recogniser never saw these people, and still tells them apart
    config = _config()
    ctx = run.context(config, workdir, mesh_from_config(config))
    ctx.add_stages([verification.RECOGNITION_STAGE])
    variables = ctx.network("recognizer", verification.RECOGNITION)
    noise = np.random.default_rng(0).random((60, 32, 32, 3), dtype=np.float32)
    people = np.arange(60) % 6
    embeddings = np.asarray(verification.embed(ctx.nets, variables, noise))
    same, different = verification.same_and_different(verification.pair_scores(embeddings), people)
    assert abs(verification.roc_auc(same, different) - 0.5) < 0.1


def test_an_unknown_row_is_a_clear_error(tmp_path):
    config = _config()
    config.suite.rows = ["blur1", "bogus"]
    with pytest.raises(ValueError, match="suite.rows.*bogus"):
        reproduce.reproduce(config, tmp_path)
