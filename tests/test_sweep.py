"""``ppfer-jax sweep`` on fake finished workdirs (a config.json and a report.json with numbers chosen here; nothing
trains): the grammar of --seeds / --num_identities, the commands, the statistic over runs against numpy and scipy,
the goals, the config check, missing runs and failing run subprocesses."""

import json
import shlex
import sys

import numpy as np
import pytest
from scipy.stats import binomtest

from ppfer_jax import sweep
from ppfer_jax.cli import main
from ppfer_jax.config import load_config

TINY = "configs/synthetic.py:tiny"  # data.num_identities 6
ROWS = ("no_privacy", "ppfer", "ppfer_robust")
CLIPS = 36  # test clips of every fake run
SHARES = ("plr", "plr_permuted", "adaptive_plr", "adaptive_plr_clip", "acc")


def stored_config(seed: int, num_identities: int, overrides=()) -> dict:
    """config.json as `ppfer-jax run` writes it for that run."""
    config = load_config(TINY, [f"seed={seed}", f"data.num_identities={num_identities}", *overrides])
    return json.loads(json.dumps(config.to_dict()))


def fake_results(num_identities: int, counts: dict, *, openset: dict | None = None, c_fc_on_c: float = 0.7) -> dict:
    """A run's report results; ``counts``: {row: {share: correct clips of CLIPS}}, fidelity from the row's index."""
    results = {
        "num_test_clips": CLIPS, "num_identities": num_identities, "chance_plr": 1 / num_identities,
        "chance_acc": 1 / 6,
        "table1": {row: {metric: counts[row][metric] / CLIPS for metric in SHARES} for row in ROWS},
        "fidelity": {row: {"ssim": 0.5 + 0.01 * counts[row]["acc"], "psnr": 14.0 + 0.1 * counts[row]["plr"],
                           "ssim_g": 0.4, "psnr_g": 12.0} for row in ROWS[1:]},
        "expression_controller": {"C_fc on clean val frames": 0.9, "C_fc on C (ppfer_robust, val)": c_fc_on_c},
    }
    if openset is not None:
        results["openset"] = openset
    return results


def random_counts(rng) -> dict:
    return {row: {metric: int(rng.integers(0, CLIPS + 1)) for metric in SHARES} for row in ROWS}


def make_run(root, seed: int, num_identities: int, results: dict | None, config: dict | None = None):
    """A workdir with its config.json and, unless ``results`` is None (an unfinished run), its report.json."""
    work = root / f"seed{seed}-identities{num_identities}"
    work.mkdir(parents=True)
    (work / "config.json").write_text(json.dumps(config or stored_config(seed, num_identities)))
    if results is not None:
        (work / "report.json").write_text(json.dumps({"results": results, "config": {}}))
    return work


def read_results(root, name: str) -> dict:
    return json.loads((root / name / "report.json").read_text())["results"]


# --- what to run -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, values", [("0-4", (0, 1, 2, 3, 4)), ("0,2,7", (0, 2, 7)), ("0-2,5", (0, 1, 2, 5)),
                                          (" 3 , 1-2 ", (3, 1, 2)), ("0-2,1", (0, 1, 2)), ("7", (7,))])
def test_values_are_ranges_and_lists(text, values):
    assert sweep.parse_values(text, "--seeds") == values


@pytest.mark.parametrize("text", ["", "a", "0-x", "3-1", "1-", "-1", "0,,2", "1.5", "0-2-4"])
def test_bad_values_name_the_flag_and_the_form(text):
    with pytest.raises(ValueError, match=r"--seeds: expected integers >= 0 and ranges, e.g. 0-4"):
        sweep.parse_values(text, "--seeds")


def test_an_identity_count_below_two_is_refused_from_the_command_line(tmp_path, capsys):
    assert main(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--num_identities", "1,8",
                 "--commands"]) == 2
    assert "--num_identities: expected integers >= 2" in capsys.readouterr().err


def test_runs_are_the_product_named_by_seed_and_identity_count(tmp_path):
    runs = sweep.plan((0, 3), (8, 12))
    assert [sweep.workdir(tmp_path, run) for run in runs] == [
        tmp_path / "seed0-identities8", tmp_path / "seed0-identities12",
        tmp_path / "seed3-identities8", tmp_path / "seed3-identities12"]
    assert sweep.log_path(tmp_path, runs[1]) == tmp_path / "logs" / "seed0-identities12.log"


def test_commands_are_plain_runs_of_the_unfinished_workdirs(tmp_path, capsys):
    root = tmp_path / "sweep root"  # a space: the lines are shell-quoted
    make_run(root, 0, 8, fake_results(8, random_counts(np.random.default_rng(0))),
             stored_config(0, 8, ["train.privacy.steps=3"]))
    assert main(["sweep", "--config", TINY, "--workdir", str(root), "--seeds", "0-1", "--num_identities", "8,12",
                 "--config.train.privacy.steps=3", "--jobs", "1", "--commands"]) == 0
    expected = [shlex.join([sys.executable, "-m", "ppfer_jax.cli", "run", "--workdir", f"{root}/{name}",
                            "--config", TINY, f"--config.seed={seed}", f"--config.data.num_identities={count}",
                            "--config.train.privacy.steps=3", "--jobs", "1"])
                for name, seed, count in (("seed0-identities12", 0, 12), ("seed1-identities8", 1, 8),
                                          ("seed1-identities12", 1, 12))]
    assert capsys.readouterr().out.splitlines() == expected
    assert sorted(p.name for p in root.iterdir()) == ["seed0-identities8"]  # printing runs nothing, writes nothing


def test_the_identity_count_defaults_to_the_configs(tmp_path, capsys):
    assert main(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--seeds", "2", "--commands"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert f"--workdir {tmp_path}/seed2-identities6 " in line and "--config.data.num_identities=6" in line


def test_the_sweeps_own_keys_cannot_be_overridden(tmp_path, capsys):
    assert main(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--config.data.num_identities=8",
                 "--commands"]) == 2
    assert "--config.data.num_identities: the sweep sets it for each run; give the values with --num_identities" \
        in capsys.readouterr().err


# --- the statistic -----------------------------------------------------------------------------------------------

@pytest.fixture
def four_runs(tmp_path):
    """Seeds 0-1 x identities 6, 8, finished, with random shares: the root."""
    rng = np.random.default_rng(7)
    for seed in (0, 1):
        for count in (6, 8):
            make_run(tmp_path, seed, count, fake_results(count, random_counts(rng)))
    return tmp_path


def summary_of(root, seeds=(0, 1), counts=(6, 8)):
    return sweep.summarise(root, sweep.plan(seeds, counts), TINY, [])


def test_mean_std_and_worst_case_are_numpys_over_the_runs(four_runs):
    summary = summary_of(four_runs)
    names = summary["finished"]
    assert names == ["seed0-identities6", "seed0-identities8", "seed1-identities6", "seed1-identities8"]
    results = {name: read_results(four_runs, name) for name in names}
    table = summary["aggregate"]["table1"]
    for row in ROWS:
        for metric, worst in (("adaptive_plr", np.argmax), ("plr_permuted", np.argmax), ("acc", np.argmin)):
            values = np.array([results[n]["table1"][row][metric] for n in names])
            stat = table[row][metric]
            assert stat["runs"] == 4
            assert stat["mean"] == pytest.approx(values.mean())
            assert stat["std"] == pytest.approx(values.std(ddof=1))
            assert stat["worst"] == pytest.approx(values[worst(values)])
            assert stat["worst_run"] == names[worst(values)]
        chance_multiples = np.array([results[n]["table1"][row]["plr"] * results[n]["num_identities"] for n in names])
        assert table[row]["plr_x_chance"]["mean"] == pytest.approx(chance_multiples.mean())
        assert table[row]["plr_x_chance"]["worst_run"] == names[np.argmax(chance_multiples)]
    for row in ROWS[1:]:
        drops = np.array([results[n]["table1"]["no_privacy"]["acc"] - results[n]["table1"][row]["acc"]
                          for n in names])
        assert table[row]["acc_drop"]["mean"] == pytest.approx(drops.mean())
        assert table[row]["acc_drop"]["worst_run"] == names[np.argmax(drops)]  # the largest drop is the worst
        ssim = np.array([results[n]["fidelity"][row]["ssim"] for n in names])
        assert table[row]["ssim"]["worst"] == pytest.approx(ssim.min())  # the lowest SSIM is the worst
        assert table[row]["ssim"]["std"] == pytest.approx(ssim.std(ddof=1))
    assert "acc_drop" not in table["no_privacy"]


def test_one_run_has_no_spread_and_says_it_is_one_run(four_runs):
    summary = summary_of(four_runs, seeds=(0,), counts=(6,))
    assert summary["aggregate"]["table1"]["ppfer"]["acc"]["std"] is None
    assert "## Table 1 over one run (seed0-identities6), no spread over seeds" in sweep.markdown(summary)


def test_each_runs_share_has_scipys_wilson_interval(four_runs):
    summary = summary_of(four_runs)
    text = sweep.markdown(summary)
    for name in summary["finished"]:
        results = read_results(four_runs, name)
        for row in ROWS:
            for metric in SHARES:
                share = summary["runs"][name]["shares"]["table1"][row][metric]
                correct = round(results["table1"][row][metric] * CLIPS)
                expected = binomtest(correct, CLIPS).proportion_ci(method="wilson")
                assert share["interval"] == pytest.approx([expected.low, expected.high], abs=1e-12)
        share = summary["runs"][name]["shares"]["table1"]["ppfer_robust"]["adaptive_plr"]
        cell = (f"{100 * share['value']:.1f}% ({100 * share['interval'][0]:.1f}–"
                f"{100 * share['interval'][1]:.1f})")
        assert any(line.startswith(f"| {name} | {CLIPS} | ppfer_robust |") and cell in line
                   for line in text.splitlines())


def goal(summary, text: str) -> dict:
    (found,) = [g for g in summary["goals"] if g["goal"] == text]
    return found


def test_a_run_over_a_bound_fails_its_goal_and_is_counted(tmp_path):
    counts = {row: {metric: 12 for metric in SHARES} for row in ROWS}  # 12 of 36: one third
    counts["no_privacy"]["acc"] = 30
    counts["ppfer_robust"].update(plr=2, adaptive_plr=6, adaptive_plr_clip=6, acc=27)
    # identities 6: adaptive PLR 6/36 = 1x chance, met; identities 24 (chance 1/24): 6/36 = 4x chance, failed;
    # ACC drop (30 - 27) / 36 = 8.3 points everywhere, met
    make_run(tmp_path, 0, 6, fake_results(6, counts))
    make_run(tmp_path, 1, 6, fake_results(6, counts, c_fc_on_c=0.4))
    make_run(tmp_path, 0, 24, fake_results(24, counts))
    summary = summary_of(tmp_path, seeds=(0, 1), counts=(6, 24))
    assert summary["missing"] == ["seed1-identities24"]
    adaptive = goal(summary, "ppfer_robust adaptive_plr <= 3x chance")
    assert (adaptive["status"], adaptive["runs_meeting"], adaptive["runs_with_number"]) == ("fail", 2, 3)
    assert adaptive["failing_runs"] == ["seed0-identities24"]
    assert adaptive["worst"] == {"value": pytest.approx(4.0), "run": "seed0-identities24"}
    drop = goal(summary, "ppfer_robust ACC drop from no_privacy <= 0.1")
    assert (drop["status"], drop["runs_meeting"]) == ("pass", 3)
    controller = goal(summary, "expression_controller: C_fc on C (ppfer_robust, val) acc >= 0.5")
    assert (controller["status"], controller["failing_runs"]) == ("fail", ["seed1-identities6"])
    assert controller["worst"] == {"value": 0.4, "run": "seed1-identities6"}
    assert goal(summary, "openset: ppfer_robust verification_auc <= 0.6")["status"] == "n/a"  # no run has it
    lines = sweep.markdown(summary).splitlines()
    assert "| ppfer_robust adaptive_plr <= 3x chance | 4.00x (seed0-identities24) | 2 of 3 | fail |" in lines


def openset(auc: float, adaptive: int, scored: int = 48) -> dict:
    table = {row: {"adaptive_plr": adaptive / scored, "adaptive_plr_clip": adaptive / scored,
                   "verification_auc": auc, "acc": 0.8} for row in ROWS}
    table["no_privacy"]["acc"] = 0.85
    return {"num_identities": 12, "num_scored_clips": scored, "chance_plr": 1 / 12, "table": table}


def test_open_set_numbers_are_aggregated_where_present_and_their_absence_named(tmp_path):
    counts = random_counts(np.random.default_rng(1))
    make_run(tmp_path, 0, 6, fake_results(6, counts, openset=openset(0.55, 4)))
    make_run(tmp_path, 1, 6, fake_results(6, counts, openset=openset(0.65, 20, scored=60)))
    make_run(tmp_path, 2, 6, fake_results(6, counts))
    summary = summary_of(tmp_path, seeds=(0, 1, 2), counts=(6,))
    auc = summary["aggregate"]["openset"]["ppfer_robust"]["verification_auc"]
    assert (auc["runs"], auc["mean"], auc["worst"], auc["worst_run"]) == (2, pytest.approx(0.6), 0.65,
                                                                          "seed1-identities6")
    multiple = summary["aggregate"]["openset"]["ppfer_robust"]["adaptive_plr_x_chance"]
    assert multiple["worst"] == pytest.approx(20 / 60 * 12) and multiple["worst_run"] == "seed1-identities6"
    verification = goal(summary, "openset: ppfer_robust verification_auc <= 0.6")
    assert (verification["status"], verification["runs_meeting"], verification["runs_with_number"]) == ("fail", 1, 2)
    interval = summary["runs"]["seed1-identities6"]["shares"]["openset"]["ppfer_robust"]["adaptive_plr"]["interval"]
    expected = binomtest(20, 60).proportion_ci(method="wilson")
    assert interval == pytest.approx([expected.low, expected.high], abs=1e-12)
    assert summary["without_openset"] == ["seed2-identities6"]
    text = sweep.markdown(summary)
    assert "No open-set numbers in: seed2-identities6." in text
    assert "1 of 2 (one run lacks the number) | fail |" in text
    assert "0.600 ± 0.071 (0.650)" in text  # AUC: mean ± sample std (worst) over those two


# --- the command -------------------------------------------------------------------------------------------------

def test_a_workdir_of_another_config_is_refused_naming_it_and_the_key(four_runs, capsys):
    config = stored_config(1, 8)
    config["train"]["privacy"]["steps"] += 1
    (four_runs / "seed1-identities8" / "config.json").write_text(json.dumps(config))
    assert main(["sweep", "--config", TINY, "--workdir", str(four_runs), "--seeds", "0-1", "--num_identities",
                 "6,8", "--aggregate"]) == 2
    err = capsys.readouterr().err
    assert f"workdir {four_runs / 'seed1-identities8'} holds a run of another config" in err
    assert "train.privacy.steps: stored" in err
    assert not (four_runs / "sweep.json").exists()


def test_a_stored_suite_section_may_differ(four_runs):
    config = stored_config(0, 6)
    config["suite"] = {"rows": ["blur1"]}  # `reproduce --rows` in that workdir changes no run's numbers
    (four_runs / "seed0-identities6" / "config.json").write_text(json.dumps(config))
    assert summary_of(four_runs)["finished"][0] == "seed0-identities6"


def test_aggregate_runs_nothing_and_lists_the_missing_runs(four_runs, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "run_command", lambda *a, **k: pytest.fail("--aggregate started a run"))
    make_run(four_runs, 2, 6, None)  # started, unfinished
    assert main(["sweep", "--config", TINY, "--workdir", str(four_runs), "--seeds", "0-2", "--num_identities",
                 "6,8", "--aggregate"]) == 0
    out = capsys.readouterr().out
    assert "4 of 6 requested runs finished" in out
    assert "missing: seed2-identities6, seed2-identities8" in out
    written = json.loads((four_runs / "sweep.json").read_text())
    assert written["missing"] == ["seed2-identities6", "seed2-identities8"]
    assert (four_runs / "sweep.md").read_text() in out  # the tables printed are sweep.md's
    assert sorted(p.name for p in four_runs.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_a_failing_run_is_reported_and_a_finished_one_not_rerun(tmp_path, capsys, monkeypatch):
    make_run(tmp_path, 0, 6, fake_results(6, random_counts(np.random.default_rng(2))))
    finishes = json.dumps({"results": fake_results(6, random_counts(np.random.default_rng(3)))})
    started = []

    def fake_command(root, run, config_spec, overrides, jobs=None):
        started.append(run.name)
        work = sweep.workdir(root, run)
        if run.seed == 1:
            return [sys.executable, "-c", "import sys; print('diverged'); sys.exit(3)"]
        if run.seed == 2:  # what a finished `run` leaves behind
            script = (f"import json, pathlib; w = pathlib.Path({str(work)!r}); w.mkdir(parents=True); "
                      f"(w / 'config.json').write_text(json.dumps({stored_config(2, 6)!r})); "
                      f"(w / 'report.json').write_text({finishes!r})")
            return [sys.executable, "-c", script]
        return [sys.executable, "-c", "pass"]  # exits 0 but writes no report: failed too

    monkeypatch.setattr(sweep, "run_command", fake_command)
    code = main(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--seeds", "0-3", "--runs_at_once", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert sorted(started) == ["seed1-identities6", "seed2-identities6", "seed3-identities6"]  # not seed0
    log = tmp_path / "logs" / "seed1-identities6.log"
    assert "diverged" in log.read_text()
    assert "run 2/4 seed1-identities6: started" in out
    assert f"run 2/4 seed1-identities6: failed (rc 3, log {log})" in out
    assert "run 3/4 seed2-identities6: finished in " in out
    assert "2 of 4 runs failed" in err and "seed1-identities6 (rc 3" in err
    assert "seed3-identities6 (rc 0 but no report.json" in err
    written = json.loads((tmp_path / "sweep.json").read_text())
    assert written["finished"] == ["seed0-identities6", "seed2-identities6"]
    assert written["missing"] == ["seed1-identities6", "seed3-identities6"]
