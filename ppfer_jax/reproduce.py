"""``ppfer-jax reproduce``: the paper's whole evaluation on one data set -- Tables 1-4 and Figure 1.

It runs the PPFER pipeline (``pipeline.run``: its stages, Tables 1-2 for No privacy and PPFER), then every
row of ``config.suite.rows``:

* Table 1 baselines: Gaussian Blur 1 / 2 (sigma searched to match PPFER's val PLR / val ACC), the trade-off
  framework, optical flow, image swapping, and the other published systems: PPRL-VGAN, the adversarial CNN
  of Narula et al. and the open-set knowledge-prior method (``ppfer_jax/baselines/``);
* Table 4 ablations: Tasks 1-6 (``recipes/ablations.py``).

A row is a method that turns clips into anonymised clips, plus the stages that train it. Every row then
meets the same downstream stages -- F_u trained afresh on its anonymised training clips (``rows/<key>/utility``),
the adaptive attacker (``rows/<key>/adaptive``) and the recovery attacker of the threat model
(``rows/<key>/recovery``; Table 3) -- and the same test-split evaluation (``evaluation.evaluate_method``), plus
the open-set, label-free verification check (``verification.py``, its recognition prior trained once) and, on the
synthetic set, the open-set test: ACC and the verification check on people no stage saw.
Stages shared between rows (the frame enhancer, PPFER's s1 for Tasks 4-5, a blur sigma's F_u) run once;
finished stages and rows are skipped, so an interrupted ``reproduce`` resumes where it stopped. On a CPU host rows
are scored by two processes at once (``jobs``: ``ppfer_jax/jobs.py``).

Writes ``suite_report.md`` / ``suite_report.json`` (our numbers beside the paper's CREMA-D ones),
``privacy_utility.png`` (Figure 1's scatter) and ``methods_frames.png`` (the methods on the same test clips).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from data_pipelines.files import write_json_atomically
from data_pipelines.sources import OPEN_SET
from ppfer_jax import config_checks, evaluation, pipeline, reproduce_report, verification
from ppfer_jax import jobs as job_processes
from ppfer_jax.attacks import adaptive_attack_stage, clip_attack_stage, recovery_stage
from ppfer_jax.baselines import blur, narula, open_set, optical_flow, pprl_vgan, swap, tradeoff
from ppfer_jax.context import Context
from ppfer_jax.figures import frame_grid
from ppfer_jax.parallel import mesh_from_config
from ppfer_jax.recipes import ablations, run
from ppfer_jax.stage import Stage
from ppfer_jax.stages.classifiers import clip_classifier_eval
from ppfer_jax.stages.utility import utility_stage
from ppfer_jax.training import read_summary

TABLE1 = {"no_privacy": "No Privacy Preservation", "blur1": "Gaussian Blur 1", "blur2": "Gaussian Blur 2",
          "tradeoff": "Trade-off Framework", "optical_flow": "Optical Flow", "swap": "Image Swapping",
          "ppfer": "PPFER (ours)", "ppfer_robust": "PPFER-robust", "pprl_vgan": "PPRL-VGAN",
          "narula": "Adversarial CNN (Narula et al.)", "open_set_priors": "Open-set knowledge priors (Xu et al.)"}
ROWS = tuple(TABLE1) + tuple(ablations.TASKS)
MAKERS = {"blur": blur.anonymised_clips, "optical_flow": optical_flow.anonymised_clips, "swap": swap.anonymised_clips,
          "tradeoff": tradeoff.anonymised_clips, "pprl_vgan": pprl_vgan.anonymised_clips,
          "narula": narula.anonymised_clips, "open_set_priors": open_set.anonymised_clips,
          open_set.UNLABELLED: open_set.unlabelled_clips,
          **{key: ablations.anonymised_clips for key in ablations.TASKS}}
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the tables: its anonymisation method, the stages that train it, and its downstream stages."""

    key: str
    label: str
    table: str                      # "table1" | "table4"
    method: str | None              # the anonymised splits it is scored on (None: the raw clips)
    stages: tuple[Stage, ...] = ()  # its own stages, in order (shared ones are skipped once done)
    utility: Stage | None = None
    adaptive: Stage | None = None
    clip: Stage | None = None
    recovery: Stage | None = None
    note: str = ""
    status: str = "ok"              # anything else: why the row was not run

    def all_stages(self) -> tuple[Stage, ...]:
        """Its own stages, then the downstream ones, in run order."""
        return self.stages + tuple(s for s in (self.utility, self.adaptive, self.clip, self.recovery) if s is not None)


def _scored(key: str, method: str, *, utility: Stage | None = None, attacks: bool = True) -> dict:
    """A row's downstream stages: F_u on its clips, and (``attacks``) the adaptive frame and clip attackers and the
    recovery attacker."""
    return dict(utility=utility or utility_stage(f"rows/{key}/utility", method),
                adaptive=adaptive_attack_stage(f"rows/{key}/adaptive", method) if attacks else None,
                clip=clip_attack_stage(f"rows/{key}/attack_clip", method) if attacks else None,
                recovery=recovery_stage(f"rows/{key}/recovery", method) if attacks else None)


def build_row(key: str, runner: pipeline.StageRunner) -> Row:
    """The row ``key``, running what it needs to be defined (the blur rows' sigma searches)."""
    config = runner.ctx.config
    if key == "no_privacy":
        return Row(key, TABLE1[key], "table1", None, utility=run.STAGE_BY_NAME["no_privacy"],
                   clip=run.STAGE_BY_NAME["attack/clip_raw"],
                   note="F_u and V_pl on the raw clips; its adaptive frame PLR is V_pl's own")
    if key in run.METHOD_ROWS:  # the method rows of `run`: their own F_u and attackers, plus a recovery attacker
        trained = {role: run.STAGE_BY_NAME[stage] for role, stage in run.METHOD_ROWS[key].items()}
        recovery = {"ppfer": "attack/recovery", "ppfer_robust": "robust/attack_recovery"}[key]
        note = (f"Algorithm 1 objective {config.privacy.objective!r}" if key == "ppfer" else
                f"code autoencoders per band; worst case over {config.privacy.robust.adversaries} co-trained "
                f"adversaries on the code, objective {config.privacy.robust.objective!r}")
        return Row(key, TABLE1[key], "table1", key, recovery=recovery_stage(recovery, key), note=note, **trained)
    if key in ("blur1", "blur2"):
        search = _blur_search(key, runner)
        method = blur.method_name(search["x"])
        matched = "PLR" if key == "blur1" else "ACC"
        return Row(key, TABLE1[key], "table1", method, **_scored(key, method, utility=_blur_utility(method)),
                   note=f"sigma = {blur.sigma_of(method):.3g} px: val {matched} {100 * search['value']:.1f}% "
                        f"for PPFER's val {matched} {100 * search['target']:.1f}% ({len(search['history'])} "
                        f"evaluations, bisection)")
    if key == "tradeoff":
        return Row(key, TABLE1[key], "table1", "tradeoff", tradeoff.STAGES, **_scored(key, "tradeoff"),
                   note=f"SPAct-style alternating updates, privacy objective {config.baselines.tradeoff.objective!r}"
                        f", weight {config.baselines.tradeoff.privacy_weight}")
    if key == "pprl_vgan":
        return Row(key, TABLE1[key], "table1", "pprl_vgan", pprl_vgan.STAGES, **_scored(key, "pprl_vgan"),
                   note="every clip re-drawn as one random training person (Chen et al. 2018, their Keras sizes "
                        "and loss weights)")
    if key == "narula":
        narula.check_schedule(config)
        return Row(key, TABLE1[key], "table1", "narula", narula.STAGES, **_scored(key, "narula"),
                   note=_narula_note(runner))
    if key == "open_set_priors":
        if "os_prior" not in runner.ctx.nets.modules:
            return Row(key, TABLE1[key], "table1", None, status="needs a recognition prior: wild people with identity "
                       "labels (the synthetic set; DFEW names none) and config model.open_set_suppressor")
        return Row(key, TABLE1[key], "table1", "open_set_priors", open_set.STAGES, **_scored(key, "open_set_priors"),
                   note="no identity label of train/val/test read; suppression against its own recognition prior "
                        "(wild people), then Algorithm 2's compensator")
    if key == "optical_flow":
        return Row(key, TABLE1[key], "table1", "optical_flow", **_scored(key, "optical_flow"),
                   note=optical_flow.FLOW_METHOD)
    if key == "swap":
        why = swap.unavailable(config)
        if why:
            return Row(key, TABLE1[key], "table1", None, status=why)
        return Row(key, TABLE1[key], "table1", "swap", **_scored(key, "swap"),
                   note="oracle swap: re-rendered with one outside person" if config.data.name == "synthetic"
                   else f"pre-swapped clips from {config.baselines.swap.directory}")
    if key in ablations.TASKS:
        task = ablations.TASKS[key]
        return Row(key, task.label, "table4", key, task.stages,
                   **_scored(key, key, attacks=config.suite.ablation_attacks))
    raise ValueError(f"config suite.rows: unknown row {key!r}; rows: {', '.join(ROWS)}")


def _narula_note(runner: pipeline.StageRunner) -> str:
    """The adversarial CNN's schedule and its two reference CNNs' val accuracies on raw frames, as its abstract
    compares them (trained here if missing)."""
    section = runner.ctx.config.baselines.narula
    runner.ctx.add_stages([narula.EMOTION_ONLY, narula.IDENTITY_ONLY])
    emotion, identity = (runner.run(stage)["eval"]["acc"] for stage in (narula.EMOTION_ONLY, narula.IDENTITY_ONLY))
    return (f"{runner.ctx.config.train.narula.steps // sum(section.phase_steps)} rounds of phases "
            f"{tuple(section.phase_steps)}, identity weight {section.identity_weight}; reference CNNs on raw val "
            f"frames: emotion-only {100 * emotion:.1f}% expression, identity-only {100 * identity:.1f}% identity")


def _blur_utility(method: str) -> Stage:
    """F_u on clips blurred with one sigma: shared by the blur rows and the ACC search."""
    return utility_stage(f"rows/{method}/utility", method)


def _run_blur_utility(runner: pipeline.StageRunner, method: str) -> dict:
    stage = _blur_utility(method)
    runner.ctx.add_stages([stage])
    return runner.run(stage)


def _blur_search(key: str, runner: pipeline.StageRunner) -> dict:
    """Blur 1's sigma matches PPFER's val PLR (V_pl on C, s2's last eval); Blur 2's its val ACC (F_u on C, s3's):
    a bisection, cached in rows/<key>/search.json."""
    workdir = runner.ctx.workdir
    path = workdir / "rows" / key / "search.json"
    if path.exists():
        return json.loads(path.read_text())
    if key == "blur1":
        search = blur.plr_search(runner.ctx, read_summary(workdir, "s2/compensation")["eval"]["leakage_on_c"])
    else:
        search = blur.acc_search(runner.ctx, read_summary(workdir, "s3/utility")["eval"]["acc"],
                                 lambda method: _run_blur_utility(runner, method)["eval"]["acc"])
    result = search.to_dict()
    if jax.process_index() == 0:
        write_json_atomically(path, result)
    return result


def _results_path(workdir: Path, key: str) -> Path:
    return workdir / "rows" / key / RESULTS_FILE


def score_row(runner: pipeline.StageRunner, row: Row, checks: dict) -> dict:
    """Trains what the row is missing and evaluates it on the test split, plus ``checks`` (``_checks``; all cached
    in rows/<key>/results.json; a cached row gets the checks it lacks)."""
    ctx = runner.ctx
    ctx.add_stages(row.all_stages())  # the context can load them, even when the row's results are cached
    path = _results_path(ctx.workdir, row.key)
    result = json.loads(path.read_text()) if path.exists() else None
    if result is not None and set(checks) <= set(result):
        return result
    if result is None:
        for stage in row.all_stages():
            runner.run(stage)
    start = time.perf_counter()
    if result is None:
        result = evaluation.evaluate_method(ctx, row.method, utility=row.utility.name,
                                            adaptive=row.adaptive.name if row.adaptive else None,
                                            clip=row.clip.name if row.clip else None,
                                            recovery=row.recovery.name if row.recovery else None)
    result.update({key: check(ctx, row) for key, check in checks.items() if key not in result})
    runner.record(f"evaluate {row.key}", time.perf_counter() - start)
    if jax.process_index() == 0:
        write_json_atomically(path, result)
    return result


def _verifies(ctx) -> bool:
    """Whether the run has a recognition prior for the open-set verification check (its wild people are named)."""
    return "recognizer" in ctx.nets.modules


def _checks(ctx) -> dict:
    """The label-free and open-set checks this run can make, by result key: the verification check, and on the
    synthetic set the rows on people no stage saw (``openset``: F_u's ACC on their anonymised clips and the
    verification check among them). The verifier's threshold is fixed once, on raw val."""
    threshold = (verification.val_threshold(ctx, ctx.network("recognizer", verification.RECOGNITION))
                 if _verifies(ctx) else None)

    def verify(row: Row, split: str) -> dict | None:
        return verification.verify(ctx, row.method, split, threshold) if threshold is not None else None

    checks = {}
    if threshold is not None:
        checks["verification"] = lambda ctx, row: verify(row, "test")
    if ctx.config.data.name == "synthetic":
        checks["open_set"] = lambda ctx, row: {
            "acc": float(clip_classifier_eval(ctx, method=row.method, net="f_u", label="expression",
                                              split=OPEN_SET)(ctx.load(row.utility.name))["acc"]),
            "verification": verify(row, OPEN_SET)}
    return checks


def reproduce(config, workdir, *, mesh=None, make_figures: bool = True, jobs: int | None = None) -> dict:
    """Runs the PPFER pipeline and every row of ``config.suite.rows``; writes and returns the suite report.

    With ``jobs`` > 1 (default ``jobs.default_jobs()``), the run's stages train in that many processes as
    ``run --jobs`` trains them, then helper processes score rows beside this one (``ppfer_jax/jobs.py``). Every
    stage's numbers are the same either way: they depend on the config and seed, not on the process that trains
    them."""
    workdir = Path(workdir)
    start = time.perf_counter()
    config_checks.check(config)
    unknown = [key for key in config.suite.rows if key not in ROWS]
    if unknown:
        raise ValueError(f"config suite.rows: unknown rows {unknown}; rows: {', '.join(ROWS)}")
    pipeline.check_workdir_config(config, workdir)
    count = jobs or job_processes.default_jobs()
    main = pipeline.run(config, workdir, mesh=mesh, make_figure=make_figures, jobs=count)
    helpers = job_processes.start_helpers(config, workdir, count - 1, __name__, "scoring rows")
    try:
        runner, checks = _row_runner(config, workdir, mesh)
        if helpers:
            for key in config.suite.rows:
                _score_unless_taken(key, runner, checks)
        job_processes.wait(helpers)
    finally:
        job_processes.stop(helpers)
    runner.timings = pipeline.load_timings(workdir)
    rows, results = {}, {}
    for key in config.suite.rows:  # every row now (cached, but for those a failed helper left)
        rows[key], results[key] = _score(key, runner, checks, keep=("test",))
    results = {key: result for key, result in results.items() if result is not None}
    suite = _suite(config, workdir, main, rows, results, runner.timings)
    suite["total_s"] = sum(runner.timings.values())
    suite["wall_s_this_call"] = time.perf_counter() - start
    if jax.process_index() == 0:
        grid = _methods_grid(runner.ctx, rows) if make_figures else None
        reproduce_report.write(workdir, suite, grid)
    return suite


def help_score_rows(config, workdir: Path) -> None:
    """A helper process of ``reproduce``: the rows, the last first (the parent goes from the first)."""
    runner, checks = _row_runner(config, workdir, None)
    for key in reversed(config.suite.rows):
        _score_unless_taken(key, runner, checks)


def _row_runner(config, workdir: Path, mesh):
    """The stage runner of the rows (their context has every row's anonymiser), and the checks of every row."""
    ctx = run.context(config, workdir, mesh or mesh_from_config(config), keep_originals=True, more_makers=MAKERS)
    runner = pipeline.StageRunner(ctx)
    if _verifies(ctx):  # the verification check's recognition prior, shared by every row
        ctx.add_stages([verification.RECOGNITION_STAGE])
        runner.run(verification.RECOGNITION_STAGE)
    return runner, _checks(ctx)


def _score_unless_taken(key: str, runner: pipeline.StageRunner, checks: dict) -> None:
    with job_processes.row_lock(runner.ctx.workdir, key) as mine:
        if mine and not _results_path(runner.ctx.workdir, key).exists():
            _score(key, runner, checks)


def _score(key: str, runner: pipeline.StageRunner, checks: dict, keep: tuple[str, ...] = ()) -> tuple[Row, dict | None]:
    """The row and its results (None: the row is unavailable here), keeping its anonymised ``keep`` splits."""
    if not _results_path(runner.ctx.workdir, key).exists():
        print(f"\n== {key}", flush=True)
    row = build_row(key, runner)
    if row.status != "ok":
        return row, None
    result = score_row(runner, row, checks)
    runner.ctx.splits.forget(row.method, keep=keep)
    return row, result


def _suite(config, workdir: Path, main: dict, rows: dict, results: dict, timings: dict) -> dict:
    r = main["results"]
    table = {}
    for key, row in rows.items():
        numbers = results.get(key) or dict.fromkeys(("plr", "plr_permuted", "adaptive_plr", "adaptive_plr_clip", "acc",
                                                     "per_class", "ssim", "psnr", "recovery", "verification",
                                                     "open_set"))
        table[key] = {"table": row.table, "label": row.label, **numbers, "status": row.status, "note": row.note}
    searches = {key: json.loads((workdir / "rows" / key / "search.json").read_text())
                for key in ("blur1", "blur2") if (workdir / "rows" / key / "search.json").exists()}
    return {
        "data": f"{config.data.name} test split", "num_test_clips": r["num_test_clips"],
        "num_identities": r["num_identities"], "chance_plr": r["chance_plr"], "chance_acc": r["chance_acc"],
        "expressions": r["expressions"], "rows": table,
        "components": {**{key: task.components for key, task in ablations.TASKS.items()},
                       "ppfer": ablations.full_components()},
        "blur_search": searches, "timings_s": dict(timings),
    }


def _methods_grid(ctx: Context, rows: dict) -> np.ndarray:
    """The same test clips (of different people) as each method leaves them: one row per clip and method."""
    test = ctx.source("test")
    picks, seen = [], set()
    for index in range(len(test)):
        if int(test[index]["identity"]) not in seen and len(picks) < ctx.config.evaluate.figure_clips:
            seen.add(int(test[index]["identity"]))
            picks.append(index)
    clips, labels = [], []
    for index in picks:
        clips.append(test[index]["video"])
        labels.append(f"clip {index}: original")
        for row in rows.values():
            if row.status == "ok" and row.method is not None:
                clips.append(ctx.source("test", row.method)[index]["video"])
                labels.append(f"clip {index}: {row.label}")
    return frame_grid(clips, row_labels=labels, scale=2)


def main(argv: list[str]) -> int:
    """A helper process of ``reproduce`` (``python -m ppfer_jax.reproduce WORKDIR INDEX``, started by
    ``jobs.start_helpers``): scores the rows of the parent's config that no other process holds."""
    workdir = Path(argv[0])
    help_score_rows(job_processes.start_helper(workdir, argv[1], "reproduce"), workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
