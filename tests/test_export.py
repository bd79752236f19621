"""`ppfer-jax export`: a bundle holds the anonymiser and nothing else, runs the evaluated chain exactly, loads
without the workdir, refuses an incompatible format, and is written whole or not at all."""

import json
import shutil

import jax
import numpy as np
import pytest

from data_pipelines.sources import load_split
from ppfer_jax import bundle as bundle_lib
from ppfer_jax import convert, export
from ppfer_jax.context import Context
from ppfer_jax.cli import main
from ppfer_jax.nets import NETWORKS, compensated_clips, to_uint8
from ppfer_jax.recipes import run
from ppfer_jax.parallel import make_mesh


def test_bundle_holds_only_the_anonymiser_and_the_utility_model(tiny_run, tiny_bundle):
    directories = {p.name for p in tiny_bundle.iterdir() if p.is_dir()}
    method = json.loads((tiny_bundle / "manifest.json").read_text())["method"]
    # no controller, validator or attacker: the method's band enhancers, F_fc and F_u
    assert directories == {*run.ANONYMISER_STAGES[method], "f_u"}
    files = {str(p.relative_to(tiny_bundle)) for p in tiny_bundle.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "config.json"} | {f"{n}/{f}" for n in directories
                                                         for f in ("variables.msgpack", "spec.json")}
    config = json.loads((tiny_bundle / "config.json").read_text())
    assert set(config["model"]) == {NETWORKS[n].section for n in directories}  # e.g. enhancer_low, compensator
    assert "train" not in config and "seed" not in config["data"]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == bundle_lib.FORMAT_VERSION
    assert manifest["networks"] == [*run.ANONYMISER_STAGES[manifest["method"]], "f_u"]
    assert {"ppfer-jax", "jax", "flax"} <= set(manifest["versions"])
    assert set(manifest["evaluation"]["table1"]) == {"no_privacy", "ppfer", "ppfer_robust"}
    assert manifest["method"] == export.default_method(tiny_run)
    assert manifest["created"]


def test_bundle_anonymises_as_the_evaluated_chain(tiny_run, tiny_bundle, monkeypatch):
    """Exactly the run's chain on the same batch; and, up to float rounding at another batch size, the anonymised
    test clips the evaluation scored (the run's stored split)."""
    config = export.load_run_config(tiny_run)
    ctx = run.context(config, tiny_run, make_mesh())
    method = json.loads((tiny_bundle / "manifest.json").read_text())["method"]
    frozen = {n: ctx.network(n, stage) for n, stage in run.ANONYMISER_STAGES[method].items()}
    clips = load_split(config, "test").arrays["video"][:6]
    expected = np.asarray(jax.jit(lambda v, x: to_uint8(compensated_clips(ctx.nets, v, x)))(frozen, clips))
    evaluated = ctx.source("test", method).arrays["video"][:6]
    # Loading a bundle reads no checkpoint of the run: the controllers' weights are never needed.
    monkeypatch.setattr(Context, "load", lambda *a: pytest.fail("a bundle load read the workdir"))
    bundle = bundle_lib.load_bundle(tiny_bundle)
    assert bundle.image_size == 32 and bundle.num_frames == 4 and bundle.has_utility
    assert bundle.expressions == ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    anonymised = bundle.anonymise(clips)
    np.testing.assert_array_equal(anonymised, expected)
    assert np.max(np.abs(anonymised.astype(int) - evaluated.astype(int))) <= 1
    assert np.mean(anonymised == evaluated) > 0.99
    assert bundle.predict(expected[:, :4]).shape == (6, 6)


def test_export_takes_the_method_asked_for_and_defaults_to_the_more_private_one(tiny_run, tmp_path):
    table = json.loads((tiny_run / "evaluate" / "results.json").read_text())["table1"]
    worst = {m: max(table[m]["adaptive_plr"], table[m]["adaptive_plr_clip"]) for m in ("ppfer", "ppfer_robust")}
    assert worst[export.default_method(tiny_run)] == min(worst.values())
    for method in ("ppfer", "ppfer_robust"):
        bundle = bundle_lib.load_bundle(export.export(tiny_run, tmp_path / method, method=method))
        assert bundle.manifest["method"] == method
        ctx = run.context(export.load_run_config(tiny_run), tiny_run, make_mesh())
        assert set(bundle.variables) == set(run.ANONYMISER_STAGES[method])  # f_low/f_high or r_low/r_high, f_fc
        for name, stage in run.ANONYMISER_STAGES[method].items():
            expected = ctx.network(name, stage)
            for x, y in zip(jax.tree.leaves(bundle.variables[name]), jax.tree.leaves(expected), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="--method 'nope'"):
        export.export(tiny_run, tmp_path / "x", method="nope")


def test_a_bundle_without_utility_refuses_to_predict(tiny_run, tmp_path):
    bundle = bundle_lib.load_bundle(export.export(tiny_run, tmp_path / "b"))
    assert set(bundle.variables) == set(run.ANONYMISER_STAGES[bundle.manifest["method"]])
    with pytest.raises(bundle_lib.BundleError, match="no utility model"):
        bundle.predict(np.zeros((1, 4, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 clips \(B, T, 32, 32, 3\)"):
        bundle.anonymise(np.zeros((1, 4, 64, 64, 3), np.uint8))


def test_an_incompatible_format_version_names_the_file_and_both_versions(tiny_bundle, tmp_path, capsys):
    copy = tmp_path / "old"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(bundle_lib.BundleError) as error:
        bundle_lib.load_bundle(copy)
    message = str(error.value)
    assert str(copy / "manifest.json") in message and "99" in message and f"{bundle_lib.FORMAT_VERSION} only" in message
    assert main(["anonymize", "x.mp4", "--bundle", str(copy), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "format version 99" in capsys.readouterr().err


def test_a_damaged_or_missing_bundle_is_named(tiny_bundle, tmp_path):
    with pytest.raises(bundle_lib.BundleError, match="not a ppfer-jax bundle"):
        bundle_lib.load_bundle(tmp_path)
    copy = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "f_fc" / "variables.msgpack", "r+b") as file:
        file.seek(100)
        file.write(b"\xff\xfe")
    with pytest.raises(bundle_lib.BundleError, match="f_fc/variables.msgpack is damaged"):
        bundle_lib.load_bundle(copy)


def test_a_failed_export_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    calls = []

    def fail_on_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return convert.save_variables(*args)

    monkeypatch.setattr(export, "save_variables", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        export.export(tiny_run, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_unfinished_run_and_an_existing_bundle(tiny_run, tiny_bundle, tmp_path):
    shutil.copy(tiny_run / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="stage s1/privacy is not finished"):
        export.export(tmp_path, tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="config.json"):
        export.export(tmp_path / "nothing", tmp_path / "b")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        export.export(tiny_run, tiny_bundle)


def test_cli_export_overwrites_on_request_and_says_how_to_use_the_bundle(tiny_run, tmp_path, capsys):
    out = tmp_path / "bundle"
    (out / "stale").mkdir(parents=True)
    args = ["export", "--workdir", str(tiny_run), "--out", str(out), "--with-utility", "--overwrite"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    method = json.loads((out / "manifest.json").read_text())["method"]
    assert f"{', '.join(run.ANONYMISER_STAGES[method])}, f_u" in printed
    assert "ppfer-jax anonymize" in printed and "PLR" in printed
    assert not (out / "stale").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging or moved-aside directory left
