"""The suite report: Tables 1-4 in the paper's layout beside its numbers, the ordering check, Figure 1."""

import json

import numpy as np
import pytest

from ppfer_jax import figures, reproduce_report
from ppfer_jax.reproduce import TABLE1

TASKS = {f"task{k}": f"Task {k}" for k in range(1, 7)}
PAPER_ROWS = [(key, label) for key, label in list(TABLE1.items()) + list(TASKS.items())
              if key in reproduce_report.PAPER_SUITE["table1"] or key in reproduce_report.PAPER_SUITE["table4"]]


def _suite_from_paper() -> dict:
    """A suite whose numbers are the paper's own (CREMA-D), every row of the paper run (our PPFER-robust row has no
    paper number)."""
    rows = {}
    for key, label in PAPER_ROWS:
        table = "table1" if key in TABLE1 else "table4"
        plr, acc = reproduce_report.PAPER_SUITE[table][key]
        ssim, psnr, rec_plr = reproduce_report.PAPER_SUITE["table3"].get(key, (None, None, None))
        rows[key] = {"table": table, "label": label, "plr": plr, "adaptive_plr": plr, "acc": acc,
                     "per_class": [acc] * 6, "ssim": 0.5, "psnr": 12.0,
                     "recovery": None if ssim is None else {"ssim": ssim, "psnr": psnr, "plr": rec_plr},
                     "status": "ok", "note": f"note of {key}"}
    marks = dict(transform=True, enhancers=True, controller=True, compensator=True, compensator_controller=True)
    return {"data": "synthetic test split", "num_test_clips": 144, "num_identities": 12, "chance_plr": 1 / 12,
            "chance_acc": 1 / 6, "expressions": ["anger", "disgust", "fear", "happy", "neutral", "sad"],
            "rows": rows, "components": {**{k: {**marks, "transform": False} for k in TASKS}, "ppfer": marks},
            "blur_search": {"blur1": {"x": 2.5, "value": 0.09, "target": 0.08, "bracket": [[2.0, 0.2], [3.0, 0.05]],
                                      "history": [[0.0, 1.0], [6.0, 0.0], [3.0, 0.05]], "bracketed": True,
                                      "converged": True}},
            "timings_s": {"s1/privacy": 30.0}, "total_s": 600.0}


def test_every_table_has_every_row_with_the_papers_numbers_beside_ours():
    text = reproduce_report.markdown(_suite_from_paper())
    for title in ("Table 1", "Table 2", "Table 3", "Table 4"):
        assert f"## {title}" in text
    for label in [label for _, label in PAPER_ROWS] + ["Full framework (PPFER)"]:
        assert f"| {label} |" in text
    for published in ("20.97%", "2.15%", "0.94", "31.14", "72.45%", "12.99%", "68.83%", "78.84%", "87.20%"):
        assert published in text
    assert "| Task 1 | ✗ | ✓ | ✓ | ✓ | ✓ |" in text
    assert "sigma 2.5 px gives 9.00% for a target of 8.00%" in text


def test_our_ordering_equals_the_papers_when_the_numbers_are_the_papers():
    assert reproduce_report.ordering_differences(_suite_from_paper()) == []
    assert "- nowhere" in reproduce_report.markdown(_suite_from_paper())


def test_a_swapped_pair_is_reported_once_per_column():
    suite = _suite_from_paper()
    suite["rows"]["swap"]["acc"] = 0.75  # paper: Trade-off 71.83% > Swap 64.96%; now Swap is above Trade-off
    differences = reproduce_report.ordering_differences(suite)
    assert differences == ["Table 1 ACC: paper has Trade-off Framework (71.83%) above Image Swapping (64.96%); "
                           "ours has Image Swapping (75.00%) above Trade-off Framework (71.83%)."]


def test_a_row_that_was_not_run_reads_na_and_says_why():
    suite = _suite_from_paper()
    suite["rows"]["swap"] = {**dict.fromkeys(("plr", "adaptive_plr", "acc", "per_class", "ssim", "psnr",
                                              "recovery")), "table": "table1", "label": "Image Swapping",
                             "status": "needs swapped videos", "note": ""}
    text = reproduce_report.markdown(suite)
    assert "| Image Swapping | n/a | n/a | n/a | n/a | n/a | 3.67% | 64.96% |" in text
    assert "- Image Swapping: not run: needs swapped videos" in text


def test_the_scatter_draws_each_point_in_its_colour():
    image = figures.privacy_utility_scatter([("A", 10.0, 80.0), ("B", 90.0, 20.0)], 8.3, 16.7,
                                            paper_points=[("A", 2.0, 78.0)], secondary=[("Task 1", 50.0, 50.0)])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    colours = image.reshape(-1, 3).astype(int)
    blue = np.array([0x1f, 0x77, 0xb4])  # matplotlib's C0, point A
    orange = np.array([0xff, 0x7f, 0x0e])  # C1, point B
    for colour in (blue, orange):
        assert (np.abs(colours - colour).sum(1) < 10).sum() > 20


def test_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    suite = _suite_from_paper()
    reproduce_report.write(tmp_path, suite, np.zeros((8, 8, 3), np.uint8))
    stored = json.loads((tmp_path / "suite_report.json").read_text())
    assert stored["rows"]["blur1"]["acc"] == suite["rows"]["blur1"]["acc"] and "paper" in stored
    for name in ("suite_report.md", "privacy_utility.png", "methods_frames.png"):
        assert (tmp_path / name).stat().st_size > 0

    def broken(file):
        file.write(b"half")
        raise OSError("disk full")

    out = tmp_path / "second"
    out.mkdir()
    monkeypatch.setattr(figures.Image.Image, "save", lambda self, file, format: broken(file))
    with pytest.raises(OSError, match="disk full"):
        reproduce_report.write(out, suite)
    assert not (out / "privacy_utility.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["suite_report.json", "suite_report.md"]
