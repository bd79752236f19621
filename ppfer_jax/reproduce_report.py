"""suite_report.md / .json and the privacy-utility figure of ``ppfer-jax reproduce``, beside the paper's numbers.

Tables follow the paper's layout: Table 1 (PLR / ACC of every approach, plus our adaptive PLR), Table 2
(per-class ACC), Table 3 (threat model: SSIM, PSNR and PLR of a recovery attacker's output), Table 4
(ablations with their component check marks). The paper's columns are its published CREMA-D results, not
a re-run; ``ordering_differences`` lists where our ranking of two methods differs from the paper's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ppfer_jax.figures import privacy_utility_scatter, save_png
from data_pipelines.files import write_text_atomically
from ppfer_jax.report import PAPER, jsonable, pct

# The paper's published CREMA-D numbers (91 identities): Tables 1, 3 and 4.
def _published(row: str) -> tuple[float, float]:
    """(PLR, ACC) of a row ``report.PAPER`` holds: the paper's numbers are stored once."""
    return PAPER["table1"][row]["plr"], PAPER["table1"][row]["acc"]


PAPER_SUITE = {
    "data": "CREMA-D (91 actors, 6 expressions), published",
    "table1": {"no_privacy": _published("no_privacy"), "blur1": (0.02150, 0.20968), "blur2": (0.88978, 0.77778),
               "tradeoff": (0.33020, 0.71827), "optical_flow": (0.01030, 0.16308), "swap": (0.03674, 0.64964),
               "ppfer": _published("ppfer")},                                   # (PLR, ACC)
    "table3": {"blur1": (0.94, 31.14, 0.7245), "blur2": (0.96, 32.54, 0.9458), "tradeoff": (0.57, 19.97, 0.4619),
               "optical_flow": (0.40, 9.59, 0.0591), "swap": (0.50, 15.46, 0.4191),
               "ppfer": (0.41, 10.18, 0.0565)},                                 # (SSIM, PSNR dB, PLR)
    "table4": {"task1": (0.12993, 0.73028), "task2": (0.32975, 0.72429), "task3": (0.12903, 0.54487),
               "task4": (0.02106, 0.61187), "task5": (0.02061, 0.48656), "task6": (0.31989, 0.68831),
               "ppfer": _published("ppfer")},                                   # (PLR, ACC)
}

COMPONENTS = (("transform", "T&IT"), ("enhancers", "PE"), ("controller", "IBC"), ("compensator", "FC"),
              ("compensator_controller", "FCC"))


def _rows(suite: dict, table: str) -> list[tuple[str, dict]]:
    rows = [(key, row) for key, row in suite["rows"].items() if row["table"] == table]
    if table == "table4" and "ppfer" in suite["rows"]:
        rows.append(("ppfer", {**suite["rows"]["ppfer"], "label": "Full framework (PPFER)"}))
    return rows


def _number(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _table1(suite: dict) -> list[str]:
    lines = ["## Table 1: privacy leakage (PLR) and utility (ACC)", "",
             "| Approach | PLR (V_pl) ↓ | permuted PLR ↓ | adaptive frame PLR ↓ | adaptive clip PLR ↓ | ACC ↑ "
             "| paper PLR | paper ACC |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in _rows(suite, "table1"):
        paper = PAPER_SUITE["table1"].get(key, (None, None))
        lines.append(f"| {row['label']} | {pct(row['plr'])} | {pct(row.get('plr_permuted'))} "
                     f"| {pct(row['adaptive_plr'])} | {pct(row.get('adaptive_plr_clip'))} | {pct(row['acc'])} "
                     f"| {pct(paper[0])} | {pct(paper[1])} |")
    return lines


def _verification(suite: dict) -> list[str]:
    """The open-set, label-free check of every row that has it (``ppfer_jax/verification.py``), and the open-set
    test on people no stage saw."""
    rows = [(key, row) for key, row in suite["rows"].items() if row.get("verification")]
    if not rows:
        return []
    lines = ["## Open-set verification (a face verifier trained on the wild people only; no task identity label)", "",
             "Test clips of the training people, then (open set) clips of people no stage saw.", "",
             "| Approach | same clip rejected ↑ | same person rejected ↑ | same vs different person AUC ↓ "
             "| open set: AUC ↓ | open set: ACC ↑ |", "|---|---|---|---|---|---|"]
    for _, row in rows:
        v, open_set = row["verification"], row.get("open_set") or {}
        open_auc = (open_set.get("verification") or {}).get("auc")
        lines.append(f"| {row['label']} | {pct(v['same_clip_reject'])} | {pct(v['same_person_reject'])} "
                     f"| {v['auc']:.3f} | {_number(open_auc, '.3f')} | {pct(open_set.get('acc'))} |")
    lines += ["", "AUC 0.5: the verifier finds nothing of the person left; raw frames give about 1."]
    return lines


def _table2(suite: dict) -> list[str]:
    names = suite["expressions"]
    lines = ["## Table 2: per-class ACC of F_u", "",
             "| Row | " + " | ".join(n[:3].capitalize() for n in names) + " | Avg (ACC) |",
             "|---|" + "---|" * (len(names) + 1)]
    for _, row in _rows(suite, "table1") + [r for r in _rows(suite, "table4") if r[0] != "ppfer"]:
        if row.get("per_class"):
            lines.append(f"| {row['label']} | " + " | ".join(pct(x) for x in row["per_class"]) +
                         f" | {pct(row['acc'])} |")
    for key, label in (("no_privacy", "No Privacy Preservation"), ("ppfer", "PPFER")):
        lines.append(f"| paper: {label} | " + " | ".join(pct(x) for x in PAPER["table2"][key]) +
                     f" | {pct(PAPER['table2_avg'][key])} |")
    return lines


def _table3(suite: dict) -> list[str]:
    lines = ["## Table 3: threat model (a U-Net recovery attacker, L1, trained on each method's training clips)", "",
             "| Approach | SSIM ↓ | PSNR (dB) ↓ | PLR of recovered ↓ | paper SSIM | paper PSNR | paper PLR |",
             "|---|---|---|---|---|---|---|"]
    for key, row in _rows(suite, "table1"):
        if key == "no_privacy":
            continue
        rec = row.get("recovery") or {}
        paper = PAPER_SUITE["table3"].get(key, (None, None, None))
        lines.append(f"| {row['label']} | {_number(rec.get('ssim'), '.2f')} | {_number(rec.get('psnr'), '.2f')} | "
                     f"{pct(rec.get('plr'))} | {_number(paper[0], '.2f')} | {_number(paper[1], '.2f')} | "
                     f"{pct(paper[2])} |")
    return lines


def _table4(suite: dict) -> list[str]:
    lines = ["## Table 4: ablations", "",
             "| Task | " + " | ".join(short for _, short in COMPONENTS)
             + " | PLR ↓ | ACC ↑ | paper PLR | paper ACC |",
             "|---|" + "---|" * (len(COMPONENTS) + 4)]
    for key, row in _rows(suite, "table4"):
        marks = suite.get("components", {}).get(key, {})
        paper = PAPER_SUITE["table4"].get(key, (None, None))
        lines.append(f"| {row['label']} | " + " | ".join("✓" if marks.get(name) else "✗" for name, _ in COMPONENTS)
                     + f" | {pct(row['plr'])} | {pct(row['acc'])} | {pct(paper[0])} | {pct(paper[1])} |")
    return lines


def _paper_value(table: str, key: str, column: int):
    return PAPER_SUITE[table].get(key, (None, None))[column]


def ordering_differences(suite: dict) -> list[str]:
    """Sentences naming each pair of rows that our numbers rank the other way round from the paper's."""
    sentences = []
    for table, column, name in (("table1", "plr", "PLR"), ("table1", "acc", "ACC"), ("table4", "plr", "PLR"),
                                ("table4", "acc", "ACC")):
        index = 0 if column == "plr" else 1
        rows = [(key, row) for key, row in _rows(suite, table)
                if row.get(column) is not None and _paper_value(table, key, index) is not None]
        for i, (key_a, a) in enumerate(rows):
            for key_b, b in rows[i + 1:]:
                ours = a[column] - b[column]
                paper = _paper_value(table, key_a, index) - _paper_value(table, key_b, index)
                if abs(ours) > 1e-9 and abs(paper) > 1e-9 and (ours > 0) != (paper > 0):
                    hi_p, lo_p = ((key_a, a), (key_b, b)) if paper > 0 else ((key_b, b), (key_a, a))
                    sentences.append(
                        f"Table {table[-1]} {name}: paper has {hi_p[1]['label']} "
                        f"({pct(_paper_value(table, hi_p[0], index))}) above {lo_p[1]['label']} "
                        f"({pct(_paper_value(table, lo_p[0], index))}); ours has {lo_p[1]['label']} "
                        f"({pct(lo_p[1][column])}) above {hi_p[1]['label']} ({pct(hi_p[1][column])}).")
    return sentences


def markdown(suite: dict) -> str:
    header = (f"Data: {suite['data']}, {suite['num_test_clips']} test clips, {suite['num_identities']} identities; "
              f"chance PLR = {pct(suite['chance_plr'])}, chance ACC = {pct(suite['chance_acc'])}. Paper columns: "
              f"{PAPER_SUITE['data']}.")
    parts = ["# PPFER: the paper's evaluation, reproduced", "", header, ""]
    for table in (_table1, _verification, _table2, _table3, _table4):
        parts += table(suite) + [""]
    parts += ["## Blur sigma search", ""]
    for key, search in suite.get("blur_search", {}).items():
        (x0, f0), (x1, f1) = search["bracket"]
        parts.append(f"- {key}: sigma {search['x']:.3g} px gives {pct(search['value'])} for a target of "
                     f"{pct(search['target'])} ({len(search['history'])} evaluations; final bracket "
                     f"[{x0:.3g}, {x1:.3g}] px with {pct(f0)} / {pct(f1)}; "
                     f"{'within tolerance' if search['converged'] else 'not within tolerance'}"
                     f"{'' if search['bracketed'] else '; target outside the range searched'})")
    parts += ["", "## Notes", ""]
    for row in suite["rows"].values():
        if row["status"] != "ok":
            parts.append(f"- {row['label']}: not run: {row['status']}")
        elif row.get("note"):
            parts.append(f"- {row['label']}: {row['note']}")
    differences = ordering_differences(suite)
    parts += ["", "## Where our ordering differs from the paper's", ""]
    parts += [f"- {s}" for s in differences] or ["- nowhere"]
    timings = suite.get("timings_s", {})
    parts += ["", f"## Stage times (total {suite.get('total_s', sum(timings.values())) / 60:.1f} min)", ""]
    parts += [f"- {k}: {v:.1f} s" for k, v in timings.items()]
    parts += ["", "Paper numbers are the published CREMA-D results, not a re-run. Figures: privacy_utility.png "
              "(Figure 1), methods_frames.png (each method on the same test clips).", ""]
    return "\n".join(parts)


def scatter(suite: dict) -> np.ndarray:
    """Figure 1: PLR against ACC, one point per Table 1 row (ablations in grey, the paper's as hollow marks)."""
    points = [(row["label"], 100 * row["plr"], 100 * row["acc"]) for _, row in _rows(suite, "table1")
              if row["plr"] is not None and row["acc"] is not None]
    tasks = [(row["label"].split(":")[0], 100 * row["plr"], 100 * row["acc"]) for key, row in _rows(suite, "table4")
             if key != "ppfer" and row["plr"] is not None and row["acc"] is not None]
    paper = [(suite["rows"][key]["label"] if key in suite["rows"] else key, 100 * plr, 100 * acc)
             for key, (plr, acc) in PAPER_SUITE["table1"].items()]
    return privacy_utility_scatter(points, 100 * suite["chance_plr"], 100 * suite["chance_acc"],
                                   paper_points=paper, secondary=tasks)


def write(workdir, suite: dict, frame_grid_image: np.ndarray | None = None) -> None:
    """suite_report.md, suite_report.json, privacy_utility.png and (given) methods_frames.png, each atomically."""
    workdir = Path(workdir)
    write_text_atomically(workdir / "suite_report.json",
                          json.dumps({**suite, "paper": PAPER_SUITE}, indent=2, default=jsonable) + "\n")
    write_text_atomically(workdir / "suite_report.md", markdown(suite))
    save_png(workdir / "privacy_utility.png", scatter(suite))
    if frame_grid_image is not None:
        save_png(workdir / "methods_frames.png", frame_grid_image)
