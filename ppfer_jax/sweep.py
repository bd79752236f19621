"""``ppfer-jax sweep``: a method claim as a statistic over seeds and identity counts.

One claim from one run is one draw: its seed picks the data, the networks' initialisation and the attackers'
training, and its identity count sets chance. The sweep runs the cartesian product of ``--seeds`` and
``--num_identities``, each a plain ``ppfer-jax run`` in its own workdir ``ROOT/seed{S}-identities{N}`` (its output in
``ROOT/logs/seed{S}-identities{N}.log``), and aggregates their ``report.json``: per row and metric the mean, the
sample spread and the worst case (with the run that gives it), the privacy shares in multiples of chance too, the
goals of ``GOALS`` as a pass/fail table, and each run's shares with their Wilson 95% intervals. It writes
``ROOT/sweep.json`` and ``ROOT/sweep.md``.

A run is finished when its ``report.json`` exists; finished runs are skipped and unfinished ones started again,
where ``run`` resumes from the stages' checkpoints. A failed run does not stop the others; the sweep names it and
exits non-zero at the end. Each finished workdir's ``config.json`` must be the config the sweep would give it, so
that runs of another config never mix into one statistic.

On one machine, ``ppfer-jax sweep --workdir ROOT --seeds 0-4 --num_identities 8,12,16`` runs the missing runs
``--runs_at_once`` at a time. On a cluster, let its scheduler run them -- with Slurm, a job array of one task per
missing run::

    ppfer-jax sweep --workdir ROOT --seeds 0-4 --num_identities 8,12,16 --commands > runs.txt
    sbatch --array=1-$(wc -l < runs.txt) --wrap 'sed -n "${SLURM_ARRAY_TASK_ID}p" runs.txt | bash'
    # once they have finished (a failed task can be resubmitted the same way: --commands lists what is missing):
    ppfer-jax sweep --workdir ROOT --seeds 0-4 --num_identities 8,12,16 --aggregate

``--commands`` prints the command of every run that is not finished, one a line, with the same paths the sweep
was given (relative ones are relative to the directory the commands run in: sbatch's is the submitting one).
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.files import write_json_atomically, write_text_atomically
from ppfer_jax import metrics

REPORT_FILE = "report.json"
CONFIG_FILE = "config.json"
LOG_DIRECTORY = "logs"
SWEEP_KEYS = ("seed", "data.num_identities")  # what the sweep sets in each run's config
IGNORED_CONFIG_SECTIONS = ("suite",)  # changes no run's numbers (pipeline.check_workdir_config ignores it too)

# Sections of a run's numbers: Table 1 (with each row's fidelity and ACC drop), the open-set table when the report
# has one, and the expression controller's accuracies (one "row" per entry, metric "acc").
TABLE1, OPEN_SET, EXPRESSION_CONTROLLER = "table1", "openset", "expression_controller"
BASELINE_ROW = "no_privacy"  # ACC drop is measured from it
# Shares of the identity that chance (1 / identities) sets a floor to; also reported as multiples of chance.
IDENTITY_SHARES = ("plr", "plr_permuted", "adaptive_plr", "adaptive_plr_clip")
SHARES = IDENTITY_SHARES + ("acc",)  # shares of clips: each run's gets a Wilson interval
HIGHER_IS_WORSE = IDENTITY_SHARES + ("verification_auc", "acc_drop")  # every other metric: lower is worse
X_CHANCE = "_x_chance"  # suffix of a share in multiples of chance
METRIC_LABELS = {"plr": "PLR (frozen V_pl)", "plr_permuted": "permuted PLR", "adaptive_plr": "adaptive frame PLR",
                 "adaptive_plr_clip": "adaptive clip PLR", "verification_auc": "verification AUC", "acc": "ACC",
                 "acc_drop": "ACC drop", "ssim": "SSIM of C", "psnr": "PSNR of C", "ssim_g": "SSIM of G",
                 "psnr_g": "PSNR of G"}
EPS = 1e-9  # shares are ratios of counts: a bound met with equality must not fail on rounding


@dataclass(frozen=True)
class Run:
    seed: int
    num_identities: int

    @property
    def name(self) -> str:
        return f"seed{self.seed}-identities{self.num_identities}"


@dataclass(frozen=True)
class Goal:
    """A bound a method row should meet on every run: ``metric`` of ``row`` in ``section`` is at most (``"<="``) or
    at least (``">="``) ``bound``. Chance-relative bounds are bounds on the ``*_x_chance`` metrics."""
    section: str
    row: str
    metric: str
    kind: str
    bound: float

    def met_by(self, value: float) -> bool:
        return value <= self.bound + EPS if self.kind == "<=" else value >= self.bound - EPS

    def describe(self) -> str:
        where = "" if self.section == TABLE1 else f"{self.section}: "
        if self.metric.endswith(X_CHANCE):
            return f"{where}{self.row} {self.metric.removesuffix(X_CHANCE)} {self.kind} {self.bound:g}x chance"
        if self.metric == "acc_drop":
            return f"{where}{self.row} ACC drop from {BASELINE_ROW} {self.kind} {self.bound:g}"
        return f"{where}{self.row} {self.metric} {self.kind} {self.bound:g}"


GOALS = (
    Goal(TABLE1, "ppfer_robust", "adaptive_plr" + X_CHANCE, "<=", 3.0),
    Goal(TABLE1, "ppfer_robust", "adaptive_plr_clip" + X_CHANCE, "<=", 3.0),
    Goal(TABLE1, "ppfer_robust", "plr" + X_CHANCE, "<=", 2.0),
    Goal(TABLE1, "ppfer_robust", "acc_drop", "<=", 0.10),
    Goal(EXPRESSION_CONTROLLER, "C_fc on C (ppfer_robust, val)", "acc", ">=", 0.50),
    Goal(OPEN_SET, "ppfer_robust", "adaptive_plr" + X_CHANCE, "<=", 3.0),
    Goal(OPEN_SET, "ppfer_robust", "adaptive_plr_clip" + X_CHANCE, "<=", 3.0),
    Goal(OPEN_SET, "ppfer_robust", "verification_auc", "<=", 0.60),
    Goal(OPEN_SET, "ppfer_robust", "acc_drop", "<=", 0.10),
)


# --- what to run ---------------------------------------------------------------------------------------------------

def parse_values(text: str, flag: str, minimum: int = 0) -> tuple[int, ...]:
    """``0-4``, ``0,2,7`` or ``0-2,5`` as the integers they name, in the order given, each once."""
    expected = f"{flag}: expected integers >= {minimum} and ranges, e.g. 0-4, 0,2,7 or 0-2,5; got {text!r}"
    values: dict[int, None] = {}  # ordered, each once
    for item in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item, re.ASCII)
        if match is None:
            raise ValueError(expected)
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if first < minimum or last < first:
            why = "a range runs upwards" if last < first else "too small"
            raise ValueError(f"{expected} ({item.strip()!r}: {why})")
        values.update(dict.fromkeys(range(first, last + 1)))
    return tuple(values)


def plan(seeds, identity_counts) -> list[Run]:
    """Every (seed, identity count) pair, seed by seed."""
    return [Run(seed, count) for seed, count in itertools.product(seeds, identity_counts)]


def workdir(root: Path, run: Run) -> Path:
    return Path(root) / run.name


def log_path(root: Path, run: Run) -> Path:
    return Path(root) / LOG_DIRECTORY / f"{run.name}.log"


def is_finished(root: Path, run: Run) -> bool:
    return (workdir(root, run) / REPORT_FILE).exists()


def check_overrides(overrides) -> None:
    """The sweep sets each run's seed and identity count; an override of either would make every run the same."""
    for item in overrides:
        key = item.removeprefix("--config.").partition("=")[0]
        if key in SWEEP_KEYS:
            flag = "--seeds" if key == "seed" else "--num_identities"
            raise ValueError(f"--config.{key}: the sweep sets it for each run; give the values with {flag}")


def run_overrides(run: Run) -> list[str]:
    return [f"--config.seed={run.seed}", f"--config.data.num_identities={run.num_identities}"]


def run_command(root: Path, run: Run, config_spec: str, overrides, jobs: int | None = None) -> list[str]:
    """The plain ``ppfer-jax run`` of one run (this Python, so the same installation)."""
    return ([sys.executable, "-m", "ppfer_jax.cli", "run", "--workdir", str(workdir(root, run)),
             "--config", config_spec, *run_overrides(run), *overrides]
            + ([] if jobs is None else ["--jobs", str(jobs)]))


def command_lines(root: Path, runs, config_spec: str, overrides, jobs: int | None = None) -> list[str]:
    """One shell line per run that is not finished, for a cluster scheduler."""
    return [shlex.join(run_command(root, run, config_spec, overrides, jobs))
            for run in runs if not is_finished(root, run)]


# --- running on this machine ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    run: Run
    returncode: int
    log: Path

    def reason(self) -> str:
        why = f"rc {self.returncode}" if self.returncode else f"rc 0 but no {REPORT_FILE}"
        return f"{why}, log {self.log}"

    def describe(self) -> str:
        return f"{self.run.name} ({self.reason()})"


def default_runs_at_once() -> int:
    """Each run already keeps two processes busy (``run --jobs``'s default on a CPU); a quarter of the cores in runs
    leaves each of those processes about two cores."""
    return max(1, (os.cpu_count() or 1) // 4)


def run_missing(root: Path, runs, config_spec: str, overrides, *, jobs: int | None = None, runs_at_once: int = 1,
                say=print) -> list[Failure]:
    """Runs every run that is not finished, ``runs_at_once`` at a time, each to its log; returns the failed ones.
    A failure does not stop the others."""
    if runs_at_once < 1:
        raise ValueError(f"--runs_at_once: expected a positive number of runs, got {runs_at_once}")
    todo = [(number, run) for number, run in enumerate(runs, 1) if not is_finished(root, run)]
    say(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run, "
        f"{min(runs_at_once, max(len(todo), 1))} at a time (logs in {Path(root) / LOG_DIRECTORY})")
    lock = threading.Lock()

    def locked_say(line: str) -> None:
        with lock:
            say(line)

    def one(item) -> Failure | None:
        number, run = item
        return _run_one(root, run, f"run {number}/{len(runs)} {run.name}",
                        run_command(root, run, config_spec, overrides, jobs), locked_say)

    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=runs_at_once) as pool:
        return [failure for failure in pool.map(one, todo) if failure is not None]


def _run_one(root: Path, run: Run, label: str, command: list[str], say) -> Failure | None:
    """One run's subprocess, its output appended to its log (a resumed run's log keeps the earlier attempts)."""
    log = log_path(root, run)
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"{label}: started")
    start = time.monotonic()
    with open(log, "a") as out:
        out.write(f"=== {_now()} {shlex.join(command)}\n")
        out.flush()
        returncode = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if returncode == 0 and is_finished(root, run):
        say(f"{label}: finished in {time.monotonic() - start:.0f} s")
        return None
    failure = Failure(run, returncode, log)
    say(f"{label}: failed ({failure.reason()})")
    return failure


# --- the runs' configs ---------------------------------------------------------------------------------------------

def expected_config(config_spec: str, overrides, run: Run) -> dict:
    """The config the sweep gives ``run``, as its workdir stores it (``config.json``), less the ignored sections."""
    from ppfer_jax.config import load_config

    config = json.loads(json.dumps(load_config(config_spec, [*run_overrides(run), *overrides]).to_dict()))
    return _without_ignored(config)


def _without_ignored(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in IGNORED_CONFIG_SECTIONS}


def check_configs(root: Path, runs, config_spec: str, overrides) -> None:
    """Every given run's stored ``config.json`` (where there is one) is the config the sweep gives that run."""
    from ppfer_jax.pipeline import config_differences

    for run in runs:
        path = workdir(root, run) / CONFIG_FILE
        if not path.exists():
            continue
        stored = _without_ignored(_read_json(path))
        differences = sorted(config_differences(stored, expected_config(config_spec, overrides, run)))
        if differences:
            shown = "; ".join(f"{key}: stored {a!r}, sweep {b!r}" for key, a, b in differences[:5])
            raise ValueError(f"workdir {workdir(root, run)} holds a run of another config than the sweep gives it "
                             f"({path}): {shown}{' ...' if len(differences) > 5 else ''}. Give the sweep the config "
                             f"and --config.* overrides it ran with, or use another --workdir")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


# --- one run's numbers ---------------------------------------------------------------------------------------------

def _number(value) -> float | None:
    """A reported number, None where it is missing (no such attacker) or not a number."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _table(rows: dict, chance: float | None) -> dict:
    """A table's rows with, for each row, its ACC drop from ``BASELINE_ROW`` and its identity shares in multiples
    of ``chance``."""
    baseline = _number(rows.get(BASELINE_ROW, {}).get("acc"))
    out = {}
    for row, numbers in rows.items():
        cells = {metric: _number(value) for metric, value in numbers.items()}
        if row != BASELINE_ROW and "acc" in cells:
            cells["acc_drop"] = None if baseline is None or cells["acc"] is None else baseline - cells["acc"]
        for metric in IDENTITY_SHARES:
            if metric in cells:
                cells[metric + X_CHANCE] = None if cells[metric] is None or not chance else cells[metric] / chance
        out[row] = cells
    return out


def run_numbers(report: dict, path: Path | str = REPORT_FILE) -> dict:
    """A run's numbers by section, row and metric (see the sections above), with the counts its shares are of:
    ``{"sections": {...}, "clips": {section: n}, "chance": {section: share}}``."""
    results = report.get("results")
    missing = [key for key in ("num_test_clips", "chance_plr", "table1") if key not in (results or {})]
    if missing:
        raise ValueError(f"{path}: expected results.{', results.'.join(missing)} (a `ppfer-jax run` report)")
    rows = {row: {**numbers, **results.get("fidelity", {}).get(row, {})} for row, numbers in results["table1"].items()}
    sections = {TABLE1: _table(rows, results["chance_plr"])}
    clips, chance = {TABLE1: results["num_test_clips"]}, {TABLE1: results["chance_plr"]}
    if "openset" in results:
        openset = results["openset"]
        sections[OPEN_SET] = _table(openset["table"], openset.get("chance_plr"))
        clips[OPEN_SET], chance[OPEN_SET] = openset.get("num_scored_clips"), openset.get("chance_plr")
    sections[EXPRESSION_CONTROLLER] = {name: {"acc": _number(value)}
                                       for name, value in results.get("expression_controller", {}).items()}
    return {"sections": sections, "clips": clips, "chance": chance}


def intervals(numbers: dict) -> dict:
    """Each share of a run (``SHARES``) with its Wilson 95% interval over the clips it is a share of:
    {section: {row: {metric: {"value", "interval": [low, high] or None}}}}."""
    out = {}
    for section, rows in numbers["sections"].items():
        total = numbers["clips"].get(section)
        if not total:
            continue
        out[section] = {row: {metric: {"value": cells[metric],
                                       "interval": None if cells[metric] is None
                                       else list(metrics.wilson_interval(cells[metric], total))}
                              for metric in SHARES if metric in cells}
                        for row, cells in rows.items()}
    return out


# --- over runs -----------------------------------------------------------------------------------------------------

def worse(metric: str) -> str:
    """'max' where a higher value is worse (privacy leaks, ACC drop), else 'min'."""
    return "max" if metric.removesuffix(X_CHANCE) in HIGHER_IS_WORSE else "min"


def statistic(values: dict[str, float], metric: str) -> dict:
    """Over runs ({run name: value}, the missing ones left out): how many, the mean, the sample standard deviation
    (None for one run) and the worst value with the first run that gives it."""
    names = list(values)
    array = np.array([values[name] for name in names], np.float64)
    index = int(np.argmax(array) if worse(metric) == "max" else np.argmin(array))
    return {"runs": len(names), "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(names) > 1 else None,
            "worst": float(array[index]), "worst_run": names[index]}


def aggregate(per_run: dict[str, dict]) -> dict:
    """{section: {row: {metric: statistic}}} over the runs' numbers ({run name: run_numbers(...)}), in the order
    sections, rows and metrics first appear."""
    collected: dict = {}
    for name, numbers in per_run.items():
        for section, rows in numbers["sections"].items():
            for row, cells in rows.items():
                for metric, value in cells.items():
                    column = collected.setdefault(section, {}).setdefault(row, {}).setdefault(metric, {})
                    if value is not None:
                        column[name] = value
    return {section: {row: {metric: statistic(values, metric) for metric, values in cells.items() if values}
                      for row, cells in rows.items()}
            for section, rows in collected.items()}


def check_goals(per_run: dict[str, dict], goals=GOALS) -> list[dict]:
    """Each goal over the runs that have its number: how many meet it, the worst value and its run, which fail, and
    a status ('pass': every such run meets it, 'fail', or 'n/a': no run has the number)."""
    out = []
    for goal in goals:
        values = {name: numbers["sections"].get(goal.section, {}).get(goal.row, {}).get(goal.metric)
                  for name, numbers in per_run.items()}
        values = {name: value for name, value in values.items() if value is not None}
        failing = [name for name, value in values.items() if not goal.met_by(value)]
        worst = None
        if values:
            pick = max if goal.kind == "<=" else min
            worst_run = pick(values, key=values.get)
            worst = {"value": values[worst_run], "run": worst_run}
        out.append({"goal": goal.describe(), "section": goal.section, "row": goal.row, "metric": goal.metric,
                    "kind": goal.kind, "bound": goal.bound, "runs": len(per_run), "runs_with_number": len(values),
                    "runs_meeting": len(values) - len(failing), "failing_runs": failing, "worst": worst,
                    "status": "n/a" if not values else "fail" if failing else "pass"})
    return out


def summarise(root: Path, runs, config_spec: str, overrides) -> dict:
    """sweep.json's content from the finished runs among ``runs`` (their configs checked first)."""
    finished = [run for run in runs if is_finished(root, run)]
    check_configs(root, finished, config_spec, overrides)
    per_run = {run.name: run_numbers(_read_json(workdir(root, run) / REPORT_FILE), workdir(root, run) / REPORT_FILE)
               for run in finished}
    return {"date": _now(), "root": str(root), "config": config_spec, "overrides": list(overrides),
            "requested": [run.name for run in runs], "finished": [run.name for run in finished],
            "missing": [run.name for run in runs if run not in finished],
            "without_openset": [name for name, numbers in per_run.items() if OPEN_SET not in numbers["sections"]],
            "aggregate": aggregate(per_run), "goals": check_goals(per_run),
            "runs": {run.name: {"seed": run.seed, "num_identities": run.num_identities,
                                "clips": per_run[run.name]["clips"], "chance": per_run[run.name]["chance"],
                                "shares": intervals(per_run[run.name])} for run in finished}}


def write(root: Path, summary: dict) -> str:
    """Writes sweep.json and sweep.md under ``root``; returns the Markdown."""
    text = markdown(summary)
    write_json_atomically(Path(root) / "sweep.json", summary)
    write_text_atomically(Path(root) / "sweep.md", text)
    return text


# --- sweep.md ------------------------------------------------------------------------------------------------------

def _percent(x) -> str:
    from ppfer_jax.report import pct

    return pct(x)


def _value(metric: str, x) -> str:
    """One number as its metric reads: SSIM and AUC to 3 decimals, PSNR in dB, multiples of chance, else percent."""
    if x is None:
        return "n/a"
    if metric.startswith("ssim") or metric == "verification_auc":
        return f"{x:.3f}"
    if metric.startswith("psnr"):
        return f"{x:.2f} dB"
    if metric.endswith(X_CHANCE):
        return f"{x:.2f}x"
    return _percent(x)


def _spread(metric: str, x) -> str:
    return _value(metric, x).removesuffix("x").removesuffix(" dB")


def _cell(stat: dict | None, metric: str, runs: int) -> str:
    """'mean ± std (worst)'; one run is labelled as one run, and a cell over fewer runs than its table says so."""
    if stat is None:
        return "n/a"
    if stat["runs"] == 1:  # a table of one run says so in its heading
        return _value(metric, stat["mean"]) + ("" if runs == 1 else f" [one run: {stat['worst_run']}]")
    text = f"{_value(metric, stat['mean'])} ± {_spread(metric, stat['std'])} ({_value(metric, stat['worst'])})"
    return text if stat["runs"] == runs else f"{text} [{stat['runs']} runs]"


def _columns(rows: dict, chance_multiples: bool) -> list[str]:
    """The metrics of a table's rows, known ones in ``METRIC_LABELS`` order, then the others."""
    present = {metric for cells in rows.values() for metric in cells if metric.endswith(X_CHANCE) == chance_multiples}
    order = [m + X_CHANCE if chance_multiples else m for m in METRIC_LABELS]
    return [m for m in order if m in present] + sorted(present - set(order))


def _label(metric: str) -> str:
    base = metric.removesuffix(X_CHANCE)
    return METRIC_LABELS.get(base, base) + (" / chance" if metric.endswith(X_CHANCE) else "")


def _aggregate_table(rows: dict, runs: int, chance_multiples: bool = False) -> list[str]:
    columns = _columns(rows, chance_multiples)
    lines = ["| Row | " + " | ".join(_label(m) for m in columns) + " |", "|---|" + "---|" * len(columns)]
    for row, cells in rows.items():
        if any(m in cells for m in columns):
            lines.append(f"| {row} | " + " | ".join(_cell(cells.get(m), m, runs) for m in columns) + " |")
    return lines


def _interval_cell(share: dict | None) -> str:
    if share is None or share["value"] is None:
        return "n/a"
    low, high = share["interval"]
    return f"{100 * share['value']:.1f}% ({100 * low:.1f}–{100 * high:.1f})"


def _per_run_table(summary: dict, section: str) -> list[str]:
    runs = {name: run["shares"][section] for name, run in summary["runs"].items() if section in run["shares"]}
    columns = [m for m in SHARES if any(m in cells for rows in runs.values() for cells in rows.values())]
    lines = ["| Run | clips | Row | " + " | ".join(_label(m) for m in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for name, rows in runs.items():
        clips = summary["runs"][name]["clips"][section]
        lines += [f"| {name} | {clips} | {row} | " + " | ".join(_interval_cell(cells.get(m)) for m in columns) + " |"
                  for row, cells in rows.items()]
    return lines


def _runs(count: int, names=()) -> str:
    """'3 runs'; one run is labelled as one run (with its name where given): its numbers have no spread."""
    if count == 1:
        return "one run" + (f" ({names[0]}), no spread over seeds" if names else "")
    return f"{count} runs"


def _goal_lines(goals: list[dict]) -> list[str]:
    lines = ["| Goal | worst (run) | runs meeting it | status |", "|---|---|---|---|"]
    for goal in goals:
        worst = "n/a" if goal["worst"] is None else \
            f"{_value(goal['metric'], goal['worst']['value'])} ({goal['worst']['run']})"
        meeting = f"{goal['runs_meeting']} of {goal['runs_with_number']}"
        if goal["runs_with_number"] < goal["runs"]:
            lacking = goal["runs"] - goal["runs_with_number"]
            meeting += f" ({_runs(lacking)} {'lacks' if lacking == 1 else 'lack'} the number)"
        lines.append(f"| {goal['goal']} | {worst} | {meeting} | {goal['status']} |")
    return lines


def markdown(summary: dict) -> str:
    """sweep.md: what was run, the aggregate tables, the goals, then each run's shares with their intervals."""
    finished, aggregated = len(summary["finished"]), summary["aggregate"]
    overrides = " ".join(summary["overrides"]) or "none"
    lines = ["# PPFER sweep over seeds and identity counts", "",
             f"{finished} of {len(summary['requested'])} requested runs finished; config {summary['config']}, "
             f"overrides: {overrides}; {summary['date']}."]
    if summary["missing"]:
        lines += ["", f"Missing (not finished): {', '.join(summary['missing'])}."]
    lines += ["", f"## Table 1 over {_runs(finished, summary['finished'])}", "",
              "Cells: mean ± sample std (worst run's value); worst is the highest identity share or ACC drop, the "
              "lowest ACC, SSIM or PSNR.", ""]
    lines += _aggregate_table(aggregated.get(TABLE1, {}), finished)
    lines += ["", "Identity shares in multiples of chance (1 / the run's identity count):", ""]
    lines += _aggregate_table(aggregated.get(TABLE1, {}), finished, chance_multiples=True)
    if OPEN_SET in aggregated:
        with_openset = finished - len(summary["without_openset"])
        lines += ["", f"## Open set (people no stage saw): {with_openset} of the {finished} runs", ""]
        if summary["without_openset"]:
            lines += [f"No open-set numbers in: {', '.join(summary['without_openset'])}.", ""]
        lines += _aggregate_table(aggregated[OPEN_SET], with_openset)
        lines += ["", "In multiples of the open set's chance:", ""]
        lines += _aggregate_table(aggregated[OPEN_SET], with_openset, chance_multiples=True)
    elif finished:
        lines += ["", "No run's report holds open-set numbers: their goals are n/a."]
    lines += ["", "## Goals (every run should meet each)", ""] + _goal_lines(summary["goals"])
    lines += ["", "## Per run: each share with its Wilson 95% interval over the run's test clips", ""]
    lines += _per_run_table(summary, TABLE1)
    if any(OPEN_SET in run["shares"] for run in summary["runs"].values()):
        lines += ["", "Open set (over the clips its attackers are scored on):", ""] + _per_run_table(summary, OPEN_SET)
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --- the verb ------------------------------------------------------------------------------------------------------

def main(root: Path, config_spec: str, overrides, seeds, identity_counts, *, jobs: int | None = None,
         runs_at_once: int | None = None, commands: bool = False, aggregate_only: bool = False, say=print) -> int:
    """``ppfer-jax sweep``: prints the commands, or runs what is missing, then aggregates; 1 if a run failed."""
    overrides = list(overrides)
    check_overrides(overrides)
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs: expected a positive number of processes, got {jobs}")
    runs = plan(seeds, identity_counts)
    if commands:
        for line in command_lines(root, runs, config_spec, overrides, jobs):
            say(line)
        return 0
    failures = []
    if not aggregate_only:
        check_configs(root, runs, config_spec, overrides)  # before hours of training, not after
        failures = run_missing(root, runs, config_spec, overrides, jobs=jobs,
                               runs_at_once=default_runs_at_once() if runs_at_once is None else runs_at_once,
                               say=say)
    if any(is_finished(root, run) for run in runs):
        summary = summarise(root, runs, config_spec, overrides)
        say("\n" + write(root, summary))
        say(f"sweep: {Path(root) / 'sweep.md'} (+ sweep.json); {len(summary['finished'])} of {len(runs)} runs"
            + (f"; missing: {', '.join(summary['missing'])}" if summary["missing"] else ""))
    elif aggregate_only:
        raise ValueError(f"none of the {len(runs)} requested runs under {root} has finished (no "
                         f"{REPORT_FILE}); missing: {', '.join(run.name for run in runs)}")
    if failures:
        print(f"ppfer-jax sweep: {len(failures)} of {len(runs)} runs failed: "
              f"{'; '.join(f.describe() for f in failures)}", file=sys.stderr)
        return 1
    return 0
