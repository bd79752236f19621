"""`ppfer-jax reproduce` on the tiny config: every baseline, the recovery attacker and one ablation through the
shared stages, with a report holding every row and column in range."""

import json
import math
import shutil

import numpy as np
import pytest

from ppfer_jax import suite
from ppfer_jax.config import load_config
from ppfer_jax.methods import blur

from conftest import TINY

ROWS = ["no_privacy", "blur1", "blur2", "tradeoff", "optical_flow", "swap", "ppfer", "task1"]


def _config():
    config = load_config(TINY)
    config.suite.rows = ROWS
    return config


@pytest.fixture(scope="module")
def reproduced(tiny_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("suite") / "run"
    shutil.copytree(tiny_run, workdir)  # the PPFER stages are done: reproduce reuses them
    return workdir, suite.reproduce(_config(), workdir)


def test_every_row_and_column_is_a_finite_number_in_range(reproduced):
    workdir, result = reproduced
    assert list(result["rows"]) == ROWS
    for key, row in result["rows"].items():
        assert row["status"] == "ok", key
        for column in ("plr", "acc"):
            assert 0.0 <= row[column] <= 1.0, (key, column)
        assert len(row["per_class"]) == 6 and all(0.0 <= x <= 1.0 for x in row["per_class"])
        if key not in ("no_privacy", "task1"):  # ablations skip the attackers (suite.ablation_attacks)
            assert 0.0 <= row["adaptive_plr"] <= 1.0, key
        if key not in ("no_privacy",):
            assert -1.0 <= row["ssim"] <= 1.0 and math.isfinite(row["psnr"]), key
        if key not in ("no_privacy", "task1"):
            recovery = row["recovery"]
            assert -1.0 <= recovery["ssim"] <= 1.0 and math.isfinite(recovery["psnr"]), key
            assert 0.0 <= recovery["plr"] <= 1.0, key
    markdown = (workdir / "suite_report.md").read_text()
    for row in result["rows"].values():
        assert row["label"] in markdown
    stored = json.loads((workdir / "suite_report.json").read_text())
    assert stored["rows"]["blur1"]["plr"] == result["rows"]["blur1"]["plr"]
    for figure in ("privacy_utility.png", "methods_frames.png"):
        assert (workdir / figure).stat().st_size > 1000


def test_the_ppfer_row_equals_the_pipelines_own_evaluation(reproduced):
    """The suite scores PPFER through the generic row evaluation; it must give the pipeline's Table 1 numbers."""
    workdir, result = reproduced
    table1 = json.loads((workdir / "evaluate" / "results.json").read_text())["table1"]
    for key in ("no_privacy", "ppfer"):
        for column in ("plr", "adaptive_plr", "acc"):
            assert result["rows"][key][column] == pytest.approx(table1[key][column], abs=1e-6), (key, column)


def test_blur_sigmas_match_their_targets_within_the_stated_tolerance(reproduced):
    workdir, result = reproduced
    config = _config().baselines.blur
    for key, tolerance in (("blur1", config.plr_tolerance), ("blur2", config.acc_tolerance)):
        search = result["blur_search"][key]
        if not search["bracketed"]:
            continue  # the target lies outside [f(lo), f(hi)]: the nearest end is reported as such
        (x_lo, f_lo), (x_hi, f_hi) = search["bracket"]
        assert min(f_lo, f_hi) <= search["target"] <= max(f_lo, f_hi)
        # Within tolerance, or the whole evaluation budget spent narrowing a bracket the target lies in.
        if abs(search["value"] - search["target"]) > tolerance:
            assert not search["converged"]
            assert len(search["history"]) == getattr(config, key.replace("blur1", "plr").replace("blur2", "acc")
                                                     + "_evaluations")
        assert (search["x"], search["value"]) in [tuple(point) for point in search["history"]]
        sigma = blur.sigma_of(blur.method_name(search["x"]))
        assert f"sigma = {sigma:.3g} px" in result["rows"][key]["note"]
    # The reported Blur 1 value is V_pl's val PLR at the reported sigma, measured again here.
    from ppfer_jax.methods.ppfer import Context
    from ppfer_jax.parallel import mesh_from_config

    ctx = Context(_config(), workdir, mesh_from_config(_config()))
    search = result["blur_search"]["blur1"]
    assert blur.val_plr(ctx, blur.sigma_of(blur.method_name(search["x"]))) == pytest.approx(search["value"])


def test_a_finished_suite_is_read_back_without_training(reproduced, monkeypatch):
    workdir, result = reproduced

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(suite, "run_stage", no_training)
    (workdir / "methods_frames.png").unlink()
    again = suite.reproduce(_config(), workdir)  # the frame grid loads every row's networks afresh
    for key in ROWS:
        assert again["rows"][key]["acc"] == result["rows"][key]["acc"]
    assert (workdir / "methods_frames.png").exists()


def test_the_oracle_swap_keeps_the_motion_and_replaces_every_face(reproduced):
    from ppfer_jax.methods.ppfer import Context
    from ppfer_jax.parallel import mesh_from_config

    workdir, _ = reproduced
    config = _config()
    ctx = Context(config, workdir, mesh_from_config(config), methods=suite.METHODS, keep_originals=True)
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


def test_an_unknown_row_is_a_clear_error(tmp_path):
    config = _config()
    config.suite.rows = ["blur1", "bogus"]
    with pytest.raises(ValueError, match="suite.rows.*bogus"):
        suite.reproduce(config, tmp_path)
