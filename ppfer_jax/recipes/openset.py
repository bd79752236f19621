"""People no stage saw: the open-set rows of ``ppfer-jax run``'s report.

A deployed anonymiser meets people it was not fitted to. For No privacy and each method row, a fresh frame and
clip attacker learn the open-set people from the first half of each person's (anonymised) clips; the evaluation
scores them on the second half, with the verification check (``verification.py``: a recogniser trained on the
wild people only) and the row's F_u (``evaluation.evaluate_openset``). Only a data set with such people (the
synthetic set's ``openset`` split) has these stages.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.sources import OPEN_SET_SCORE
from ppfer_jax import metrics
from ppfer_jax.attacks import openset_attack_stages
from ppfer_jax.evaluation import GATHER, evaluator
from ppfer_jax.nets import pick_frames, to_float
from ppfer_jax.recipes import ppfer, robust
from ppfer_jax.verification import (RECOGNITION, RECOGNITION_STAGE, embed, pair_scores, roc_auc, same_and_different,
                                    val_threshold)

ROWS = {"no_privacy": None, ppfer.METHOD: ppfer.METHOD, robust.METHOD: robust.METHOD}  # row -> method (None: raw)
UTILITY = {"no_privacy": "no_privacy", ppfer.METHOD: ppfer.ROW["utility"], robust.METHOD: robust.ROW["utility"]}
ATTACKERS = {row: openset_attack_stages(f"openset/{row}", method) for row, method in ROWS.items()}
STAGES = (RECOGNITION_STAGE,) + tuple(stage for pair in ATTACKERS.values() for stage in pair)


def applies(config) -> bool:
    """Whether the config's data set has people no stage sees."""
    return bool(config.data.get("num_openset_identities"))


def evaluate(ctx) -> dict:
    """The open-set results of the report: per row, on the second half of each open-set person's clips, the frame
    and clip attackers' accuracy, the verification AUC and same-person reject rate (threshold: equal error on raw
    val), and the row's F_u's expression accuracy."""
    nets, config = ctx.nets, ctx.config
    recognizer = ctx.network("recognizer", RECOGNITION)
    threshold = val_threshold(ctx, recognizer)

    def counts(v, batch):
        video, ids, mask = to_float(batch["video"]), batch["identity"], batch["mask"]
        frame = pick_frames(video, batch["eval_frame"])
        return {"adaptive_plr": metrics.correct_counts(nets.apply("openset_attacker", v["frame"], frame), ids, mask),
                "adaptive_plr_clip": metrics.correct_counts(nets.apply("openset_clip_attacker", v["clip"], video),
                                                            ids, mask),
                "acc": metrics.correct_counts(nets.apply("f_u", v["f_u"], video), batch["expression"], mask),
                GATHER: {"embedding": embed(nets, v["recognizer"], frame), "identity": ids}}

    table = {}
    for row, method in ROWS.items():
        frame_stage, clip_stage = ATTACKERS[row]
        r = evaluator(ctx, counts, OPEN_SET_SCORE, method)({
            "frame": ctx.network("openset_attacker", frame_stage.name),
            "clip": ctx.network("openset_clip_attacker", clip_stage.name),
            "f_u": ctx.network("f_u", UTILITY[row]), "recognizer": recognizer})
        same, different = same_and_different(pair_scores(r[GATHER]["embedding"]), r[GATHER]["identity"])
        table[row] = {"adaptive_plr": float(r["adaptive_plr"]), "adaptive_plr_clip": float(r["adaptive_plr_clip"]),
                      "verification_auc": roc_auc(same, different),
                      "same_person_reject": float(np.mean(same < threshold)), "acc": float(r["acc"])}
    people = config.data.num_openset_identities
    return {"num_identities": people, "num_fit_clips": people * (config.data.clips_per_identity_openset // 2),
            "num_scored_clips": len(ctx.source(OPEN_SET_SCORE)), "chance_plr": 1.0 / people,
            "verification_threshold": threshold, "table": table}
