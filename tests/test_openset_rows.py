"""The open-set rows of ``ppfer-jax run``'s report: attackers of people no other stage sees, fit on one half of each
person's clips and scored, with F_u and the verifier, on the other."""

import jax
import numpy as np
import pytest
from scipy.stats import binomtest

from configs import cremad
from data_pipelines.sources import OPEN_SET, OPEN_SET_FIT, OPEN_SET_SCORE, load_split
from ppfer_jax.config import load_config
from ppfer_jax.nets import compensated_clips, pick_frames, to_float, to_uint8
from ppfer_jax.parallel import make_mesh
from ppfer_jax.recipes import openset, ppfer, run

TINY = "configs/synthetic.py:tiny"


def test_the_halves_split_every_person_clips_into_two_with_every_expression():
    config = load_config(TINY, ["data.clips_per_identity_openset=12"])
    whole, fit, score = (load_split(config, split) for split in (OPEN_SET, OPEN_SET_FIT, OPEN_SET_SCORE))
    assert len(fit) == len(score) == len(whole) // 2
    first = np.arange(len(whole)) % 12 < 6
    np.testing.assert_array_equal(fit.arrays["video"], whole.arrays["video"][first])
    np.testing.assert_array_equal(score.arrays["video"], whole.arrays["video"][~first])
    for half in (fit, score):  # every person, each with each of the 6 expressions once
        pairs = set(zip(half.arrays["identity"].tolist(), half.arrays["expression"].tolist()))
        assert pairs == {(p, e) for p in range(config.data.num_openset_identities) for e in range(6)}


def test_only_a_data_set_with_people_no_stage_sees_has_the_open_set_stages():
    names = lambda config: {stage.name for stage in run.stages_for(config)}  # noqa: E731
    unseen = {stage.name for stage in openset.STAGES}
    assert unseen <= names(load_config(TINY))
    assert not unseen & names(cremad.get_config())
    assert names(cremad.get_config()) | unseen == names(load_config(TINY))


def test_the_open_set_attackers_read_only_the_first_half_and_the_report_only_the_second(tiny_run_and_reads):
    *_, reads = tiny_run_and_reads
    by_stage = {}
    for stage, split in reads:
        by_stage.setdefault(stage, set()).add(split)
    for frame_stage, clip_stage in openset.ATTACKERS.values():  # (the second of a row reuses its anonymised half)
        assert by_stage.get(frame_stage.name, set()) | by_stage.get(clip_stage.name, set()) == {OPEN_SET_FIT}
    assert OPEN_SET_SCORE in by_stage[None]
    assert not any(OPEN_SET_SCORE in splits for stage, splits in by_stage.items() if stage is not None)


@pytest.mark.parametrize("row", ["no_privacy", "ppfer"])
def test_the_open_set_numbers_are_the_row_networks_on_the_second_half(tiny_run_and_reads, row):
    """Recomputed clip by clip from the stages' networks and the raw second half (anonymised here through the PPFER
    chain, rounded to uint8 as stored)."""
    workdir, report, _ = tiny_run_and_reads
    o = report["results"]["openset"]
    config = load_config(TINY)
    ctx = run.context(config, workdir, make_mesh())
    clips = load_split(config, OPEN_SET_SCORE).arrays
    video = clips["video"]
    if row == "ppfer":
        chain = {n: ctx.network(n, stage) for n, stage in ppfer.ANONYMISER_STAGES.items()}
        video = np.asarray(to_uint8(compensated_clips(ctx.nets, chain, jax.numpy.asarray(video))))
    video = to_float(jax.numpy.asarray(video))
    frame_stage, clip_stage = openset.ATTACKERS[row]
    frame_logits = ctx.nets.apply("openset_attacker", ctx.network("openset_attacker", frame_stage.name),
                                  pick_frames(video, jax.numpy.asarray(clips["eval_frame"])))
    clip_logits = ctx.nets.apply("openset_clip_attacker", ctx.network("openset_clip_attacker", clip_stage.name), video)
    utility = ctx.nets.apply("f_u", ctx.network("f_u", openset.UTILITY[row]), video)
    hit = lambda logits, label: np.mean(np.argmax(np.asarray(logits), -1) == clips[label])  # noqa: E731
    numbers = o["table"][row]
    assert numbers["adaptive_plr"] == pytest.approx(hit(frame_logits, "identity"), abs=1e-6)
    assert numbers["adaptive_plr_clip"] == pytest.approx(hit(clip_logits, "identity"), abs=1e-6)
    assert numbers["acc"] == pytest.approx(hit(utility, "expression"), abs=1e-6)
    assert o["num_scored_clips"] == len(video) and o["chance_plr"] == pytest.approx(1 / 6)
    assert 0.0 <= numbers["verification_auc"] <= 1.0


def test_the_report_shows_the_open_set_rows_with_their_wilson_intervals(tiny_run_and_reads):
    workdir, report, _ = tiny_run_and_reads
    o = report["results"]["openset"]
    n = o["num_scored_clips"]
    section = (workdir / "report.md").read_text().split("## People no stage saw")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "%" in line]
    assert len(lines) == len(o["table"]) == 3
    for line, numbers in zip(lines, o["table"].values()):
        for key in ("adaptive_plr", "adaptive_plr_clip", "acc"):
            k = round(numbers[key] * n)
            interval = binomtest(k, n).proportion_ci(method="wilson")
            assert f"{100 * k / n:.2f}% ({100 * interval.low:.1f}-{100 * interval.high:.1f})" in line, (key, line)
        assert f"| {numbers['verification_auc']:.3f} |" in line
