"""report.md / report.json / report.png from the ``evaluate`` results, with the paper's numbers beside ours."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ppfer_jax import metrics
from ppfer_jax.figures import frame_grid, save_png
from data_pipelines.files import write_text_atomically

# The paper's published CREMA-D numbers (91 identities, chance PLR 1.099%): Tables 1 and 2.
PAPER = {
    "data": "CREMA-D (91 actors, 6 expressions)",
    "table1": {"no_privacy": {"plr": 1.0, "acc": 0.87201}, "ppfer": {"plr": 0.02016, "acc": 0.78843}},
    "table2_expressions": ["anger", "disgust", "fear", "happy", "neutral", "sad"],
    "table2": {"no_privacy": [0.917, 0.988, 0.803, 0.983, 0.849, 0.808],
               "ppfer": [0.936, 0.812, 0.800, 0.967, 0.807, 0.409]},
    "table2_avg": {"no_privacy": 0.872, "ppfer": 0.788},
}
TABLE1_SHARES = ("plr", "plr_permuted", "adaptive_plr", "adaptive_plr_clip", "acc")
ROWS = (("no_privacy", "No privacy preservation"), ("ppfer", "PPFER (ours, the paper's Algorithm 1)"),
        ("ppfer_robust", "PPFER-robust (identity-free code per band, co-trained restarted adversaries)"))


def build(results: dict, config_dict: dict, timings: dict) -> dict:
    return {"results": results, "paper": PAPER, "timings_s": timings, "config": config_dict}


def write(workdir: Path, report: dict, figure=None) -> None:
    workdir = Path(workdir)
    write_text_atomically(workdir / "report.json", json.dumps(report, indent=2, default=jsonable) + "\n")
    write_text_atomically(workdir / "report.md", markdown(report))
    if figure is not None:
        rows, labels = figure
        save_png(workdir / "report.png", frame_grid(rows, row_labels=labels, scale=2))


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def share(x, total: int) -> str:
    """A share of ``total`` test clips with its Wilson 95% interval, e.g. '22.22% (18.6-26.3)'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return pct(x)
    low, high = metrics.wilson_interval(x, total)
    return f"{pct(x)} ({100 * low:.1f}-{100 * high:.1f})"


def _paper(p: dict, key: str, metric: str) -> str:
    return pct(p["table1"][key][metric]) if key in p["table1"] else "-"


def tables(report: dict) -> str:
    """Table 1 and Table 2 as Markdown (printed at the end of ``run``)."""
    r, p = report["results"], report["paper"]
    t1 = r["table1"]
    lines = [f"Table 1 ({r['data']}, {r['num_test_clips']} clips, {r['num_identities']} identities; "
             f"chance PLR = 1/{r['num_identities']} = {pct(r['chance_plr'])}, chance ACC = {pct(r['chance_acc'])}; "
             "one run: each share with its 95% Wilson interval over the test clips)",
             "",
             "| Approach | PLR (frozen V_pl) ↓ | permuted PLR ↓ | adaptive frame PLR ↓ | adaptive clip PLR ↓ | ACC ↑ "
             "| paper PLR (CREMA-D) | paper ACC (CREMA-D) |",
             "|---|---|---|---|---|---|---|---|"]
    n = r["num_test_clips"]
    for key, label in ROWS:
        row = t1[key]
        lines.append(f"| {label} | " + " | ".join(share(row[m], n) for m in TABLE1_SHARES) +
                     f" | {_paper(p, key, 'plr')} | {_paper(p, key, 'acc')} |")
    lines += ["", "Attackers (the same budget for every row): " +
              "; ".join(f"{name}: {what}" for name, what in r["attackers"].items())]
    names = r["expressions"]
    lines += ["", "Table 2 (per-class ACC of F_u; paper rows: CREMA-D, published)", "",
              "| Row | " + " | ".join(n[:3].capitalize() for n in names) + " | Avg (ACC) |",
              "|---|" + "---|" * (len(names) + 1)]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(pct(x) for x in r["table2"][key]) +
                     f" | {pct(t1[key]['acc'])} |")
    for key, label in ROWS:
        if key in p["table2"]:
            lines.append(f"| paper: {label} | " + " | ".join(pct(x) for x in p["table2"][key]) +
                         f" | {pct(p['table2_avg'][key])} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    r = report["results"]
    parts = ["# PPFER report", "", tables(report), "",
             "## Controllers (clean val accuracy on their own input, before Algorithm 1)", ""]
    parts += [f"- {k}: {pct(v)}" for k, v in r["controllers_clean_accuracy"].items()]
    parts += ["", "## After Algorithm 1 (selected step "
              f"{r['controllers_after_privacy']['selected_step']}: the best SSIM of G among the val evaluations "
              f"where the selection validator V_sel is within the target)", ""]
    parts += [f"- {k}: {v:.3f}" if k.startswith("SSIM") else f"- {k}: {pct(v)}"
              for k, v in r["controllers_after_privacy"].items() if k != "selected_step"]
    parts += [f"- V_pl on G (before compensation, test): {row}: {pct(v)}"
              for row, v in r["plr_before_compensation"].items()]
    parts += ["", f"## PPFER-robust's checkpoint (step {r['robust_selection']['selected_step']}, chosen by a ridge "
              "attacker trained from scratch on val, not by any reported attacker)", ""]
    parts += [f"- {k}: {pct(v)}" for k, v in r["robust_selection"].items() if k != "selected_step"]
    parts += ["", "## Expression controller C_fc (trained on the disjoint 'wild' people)", ""]
    parts += [f"- {k}: {pct(v)}" for k, v in r["expression_controller"].items()]
    parts += openset_section(r.get("openset"))
    parts += ["", "## Image similarity to the original test frames (all frames, clipped to [0, 1])", ""]
    parts += [f"- {row}: SSIM C {f['ssim']:.3f}, G {f['ssim_g']:.3f}; PSNR C {f['psnr']:.2f} dB, G {f['psnr_g']:.2f} dB"
              for row, f in r["fidelity"].items()]
    parts += ["  (paper Table 3, after a recovery attack on PPFER: SSIM 0.41, PSNR 10.18 dB)", "",
              "## Stage times (s)", ""]
    parts += [f"- {k}: {v:.1f}" for k, v in report["timings_s"].items()]
    parts += ["", f"Paper numbers are the published CREMA-D results (91 identities), not a re-run; ours are on the "
              f"{r['data']}. Figure: report.png (rows per clip: original, low band, |high band|, then G and C of "
              f"each method).", ""]
    return "\n".join(parts)


def openset_section(o: dict | None) -> list[str]:
    """The open-set rows (``recipes/openset.py``) as Markdown lines; none where the data has no such people."""
    if not o:
        return []
    n, labels = o["num_scored_clips"], dict(ROWS)
    lines = ["", f"## People no stage saw ({o['num_identities']} people; attackers trained afresh on "
             f"{o['num_fit_clips']} of their clips, everything scored on the other {n}; chance "
             f"{pct(o['chance_plr'])})", "",
             "| Approach | fresh frame attacker ↓ | fresh clip attacker ↓ | verification AUC ↓ | same-person pairs "
             "rejected | ACC ↑ |", "|---|---|---|---|---|---|"]
    for key, row in o["table"].items():
        lines.append(f"| {labels.get(key, key)} | {share(row['adaptive_plr'], n)} | "
                     f"{share(row['adaptive_plr_clip'], n)} | {row['verification_auc']:.3f} | "
                     f"{pct(row['same_person_reject'])} | {share(row['acc'], n)} |")
    return lines


def jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
