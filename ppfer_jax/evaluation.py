"""The ``evaluate`` stage: Table 1 / Table 2 numbers on the test split through the whole chain.

Rows: No privacy (raw clips), ``ppfer`` (the paper's Algorithm 1) and ``ppfer_robust`` (``methods/robust.py``).
Every privacy number names its attacker:

* PLR: the frozen V_pl on ONE frame per test clip (the fixed ``eval_frame`` drawn from the config seed),
  compensated or raw. Chance is 1 / number of identities.
* permuted PLR (the relabelling check, no training): V_pl's confusion matrix scored under the best one-to-one
  relabelling. A PLR at chance with a high permuted PLR means the enhancers relabel people, not hide them.
* adaptive PLR: a fresh identity classifier (V_pl's architecture) trained on the row's anonymised training
  frames, on the same test frames. For No privacy the fresh classifier on raw frames *is* V_pl.
* adaptive clip PLR: a fresh clip classifier (F_u's R3D) trained on identity from the row's anonymised
  training clips, on whole test clips.
* ACC / per-class ACC: F_u trained on the row's (anonymised, uint8) training clips, on its test clips.
* SSIM / PSNR between original and compensated (C) and privacy-preserved (G) test frames, all frames,
  images clipped to [0, 1].

``evaluate_method`` scores one row of ``ppfer-jax reproduce`` (a baseline or an ablation) the same way on
that method's anonymised test clips, plus its recovery attacker's reconstructions (Table 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.loader import iterate_once
from ppfer_jax import metrics, wavelets
from ppfer_jax.attacks import recover
from ppfer_jax.methods.ppfer import Context, compensated_clips, pick_frames, to_float, to_uint8
from ppfer_jax.methods.registry import ANONYMISER_STAGES, METHOD_ROWS
from ppfer_jax.parallel import global_batch
from ppfer_jax.training import read_summary


def evaluate(ctx: Context) -> dict:
    """All numbers of the report, as plain Python floats/lists."""
    nets, config = ctx.nets, ctx.config
    num_expr, num_ids = config.data.num_expressions, config.data.num_identities
    variables = {"v_pl": ctx.network("v_pl"), "f_u": ctx.network("f_u", "no_privacy"),
                 "clip_attacker": ctx.network("clip_attacker", "attack/clip_raw")}
    for method, stages in METHOD_ROWS.items():
        variables[method] = {
            **{n: ctx.network(n, stage) for n, stage in ANONYMISER_STAGES[method].items()},
            "f_u": ctx.network("f_u", stages["utility"]), "attacker": ctx.network("attacker", stages["adaptive"]),
            "clip_attacker": ctx.network("clip_attacker", stages["clip"])}

    def row_counts(v, clips, pick, batch) -> dict:
        """One row's counts on its (anonymised) test clips: PLR with its confusion, attackers, ACC."""
        ids, exprs, mask = batch["identity"], batch["expression"], batch["mask"]
        validator = nets.apply("v_pl", v["v_pl"], pick(clips))
        utility = nets.apply("f_u", v["f_u"], clips)
        return {"plr": metrics.correct_counts(validator, ids, mask),
                "confusion": metrics.confusion_counts(validator, ids, num_ids, mask),
                "adaptive_plr_clip": metrics.correct_counts(nets.apply("clip_attacker", v["clip_attacker"], clips),
                                                            ids, mask),
                "acc": metrics.correct_counts(utility, exprs, mask),
                "per_class": metrics.per_class_counts(jnp.argmax(utility, -1), exprs, num_expr, mask)}

    def counts(v, batch):
        frames = to_float(batch["video"])
        pick = lambda x: pick_frames(x, batch["eval_frame"])  # noqa: E731
        out = {"no_privacy": row_counts(v, frames, pick, batch)}
        for method in METHOD_ROWS:
            mv = {**v[method], "v_pl": v["v_pl"]}
            g = nets.privatize(mv, frames)
            c = to_float(to_uint8(nets.compensate(mv["f_fc"], g)))  # the anonymised video, as stored
            out[method] = {**row_counts(mv, c, pick, batch),
                           "adaptive_plr": metrics.correct_counts(nets.apply("attacker", mv["attacker"], pick(c)),
                                                                  batch["identity"], batch["mask"]),
                           "plr_g": metrics.correct_counts(nets.apply("v_pl", v["v_pl"], pick(g)),
                                                           batch["identity"], batch["mask"]),
                           **_similarity_counts("c", frames, c, batch["mask"]),
                           **_similarity_counts("g", frames, g, batch["mask"])}
        return out

    jitted = jax.jit(counts)
    sums = None
    for batch in iterate_once(ctx.source("test"), ctx.eval_batch_size):
        out = jitted(variables, global_batch(batch, ctx.mesh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    # {correct, total} counts become ratios and bare arrays (the confusion matrices) stay sums, as in Context.evaluator
    r = {row: {name: metrics.ratio(v["correct"], v["total"]) if isinstance(v, dict) else np.asarray(v)
               for name, v in row_sums.items()} for row, row_sums in sums.items()}

    def table1(row: str) -> dict:
        numbers = r[row]
        return {"plr": numbers["plr"], "plr_permuted": metrics.permuted_accuracy(numbers["confusion"]),
                # on raw clips the frame attacker trained afresh on raw frames is V_pl itself
                "adaptive_plr": numbers.get("adaptive_plr", numbers["plr"]),
                "adaptive_plr_clip": numbers["adaptive_plr_clip"], "acc": numbers["acc"]}

    identity = read_summary(ctx.workdir, "pretrain/identity")["eval"]
    privacy = read_summary(ctx.workdir, "s1/privacy")
    robust = read_summary(ctx.workdir, "robust/privacy")
    expression = read_summary(ctx.workdir, "pretrain/expression")["eval"]
    rows = ("no_privacy",) + tuple(METHOD_ROWS)
    return {
        "data": f"{config.data.name} test split",
        "num_test_clips": int(round(float(sums["no_privacy"]["acc"]["total"]))),
        "num_identities": num_ids,
        "chance_plr": 1.0 / num_ids,
        "chance_acc": 1.0 / num_expr,
        "expressions": list(_expression_names(config)),
        "attackers": attacker_budgets(config),
        "table1": {row: table1(row) for row in rows},
        "table2": {row: [float(x) for x in r[row]["per_class"]] for row in rows},
        "fidelity": {m: {"ssim": r[m]["ssim_c"], "psnr": r[m]["psnr_c"], "ssim_g": r[m]["ssim_g"],
                         "psnr_g": r[m]["psnr_g"]} for m in METHOD_ROWS},
        "plr_before_compensation": {m: r[m]["plr_g"] for m in METHOD_ROWS},
        "controllers_clean_accuracy": {"C_lpr (low band)": identity["c_low_acc"],
                                       "C_hpr (high band)": identity["c_high_acc"],
                                       "V_pl (frames)": identity["v_pl_acc"],
                                       "V_sel (frames; chooses s1's checkpoint)": identity["v_sel_acc"]},
        "controllers_after_privacy": {"C_lpr on F_lpr(low)": privacy["best"]["metrics"]["c_low_acc"],
                                      "C_hpr on F_hpr(high)": privacy["best"]["metrics"]["c_high_acc"],
                                      "V_sel on G": privacy["best"]["metrics"]["v_sel_acc"],
                                      "SSIM of G": privacy["best"]["metrics"]["ssim_g"],
                                      "selected_step": privacy["best"]["step"]},
        "robust_selection": {"selected_step": robust["best"]["step"],
                             "held-out ridge attacker on G (val)": robust["best"]["metrics"]["held_out_attacker_acc"],
                             "C_fc on G (val)": robust["best"]["metrics"]["c_fc_acc_on_g"]},
        "expression_controller": {"C_fc on clean val frames": expression["c_fc_acc_val_frames"],
                                  **{f"C_fc on {kind} ({m}, val)":
                                     read_summary(ctx.workdir, stages["f_fc"])["eval"][key]
                                     for m, stages in ANONYMISER_STAGES.items()
                                     for kind, key in (("G", "c_fc_acc_on_g"), ("C", "c_fc_acc_on_c"))}},
    }


def attacker_budgets(config) -> dict:
    """What each attacker of the report is and how long it trains: the same for every row."""
    t, m = config.train, config.model
    return {"frozen validator V_pl": f"{m.validator['name']} on one clean frame per clip, frozen",
            "adaptive frame attacker": f"fresh {m.validator['name']} on one random anonymised training frame per "
                                       f"clip, {t.adaptive_attack.steps} steps of {t.adaptive_attack.batch_size}",
            "adaptive clip attacker": f"fresh {m.utility['name']} on whole anonymised training clips, "
                                      f"{t.clip_attack.steps} steps of {t.clip_attack.batch_size}",
            "relabelling check": "V_pl's confusion under the best one-to-one relabelling (Hungarian)"}


def evaluate_method(ctx: Context, method: str | None, *, utility: str, adaptive: str | None = None,
                    clip: str | None = None, recovery: str | None = None) -> dict:
    """One row of Tables 1-4 on the test split: a method's anonymised test clips (``method``; None: the raw
    clips) scored by the frozen V_pl (PLR, and permuted PLR: the relabelling check), the frame attacker of stage
    ``adaptive`` and the clip attacker of stage ``clip`` (adaptive PLRs), the F_u of stage ``utility`` (ACC, per
    class), their SSIM / PSNR to the originals, and, with a ``recovery`` stage, the recovery attacker's
    reconstructions (Table 3: SSIM, PSNR, V_pl's PLR on them)."""
    nets, config = ctx.nets, ctx.config
    variables = {"v_pl": ctx.network("v_pl"), "f_u": ctx.network("f_u", utility)}
    if adaptive:
        variables["attacker"] = ctx.network("attacker", adaptive)
    if clip:
        variables["clip_attacker"] = ctx.network("clip_attacker", clip)
    if recovery:
        variables["recovery"] = ctx.network("recovery", recovery)

    def counts(v, batch):
        video, mask, ids, exprs = to_float(batch["video"]), batch["mask"], batch["identity"], batch["expression"]
        pick = lambda x: pick_frames(x, batch["eval_frame"])  # noqa: E731
        logits = nets.apply("f_u", v["f_u"], video)
        validator = nets.apply("v_pl", v["v_pl"], pick(video))
        out = {"plr": metrics.correct_counts(validator, ids, mask),
               "confusion": metrics.confusion_counts(validator, ids, config.data.num_identities, mask),
               "acc": metrics.correct_counts(logits, exprs, mask),
               "per_class": metrics.per_class_counts(jnp.argmax(logits, -1), exprs, config.data.num_expressions,
                                                     mask)}
        if "attacker" in v:
            out["adaptive_plr"] = metrics.correct_counts(nets.apply("attacker", v["attacker"], pick(video)), ids, mask)
        if "clip_attacker" in v:
            out["adaptive_plr_clip"] = metrics.correct_counts(nets.apply("clip_attacker", v["clip_attacker"], video),
                                                              ids, mask)
        if "original" in batch:
            original = to_float(batch["original"])
            out.update(_similarity_counts("anonymised", original, video, mask))
            if "recovery" in v:
                recovered = recover(nets, v["recovery"], video)
                out.update(_similarity_counts("recovered", original, recovered, mask))
                out["plr_recovered"] = metrics.correct_counts(nets.apply("v_pl", v["v_pl"], pick(recovered)), ids,
                                                              mask)
        return out

    r = ctx.evaluator(counts, "test", method, originals=method is not None)(variables)
    number = lambda key: float(r[key]) if key in r else None  # noqa: E731
    return {
        "plr": number("plr"),
        "plr_permuted": metrics.permuted_accuracy(r["confusion"]),
        "adaptive_plr": number("adaptive_plr") if adaptive else (number("plr") if method is None else None),
        "adaptive_plr_clip": number("adaptive_plr_clip"),
        "acc": number("acc"),
        "per_class": [float(x) for x in r["per_class"]],
        "ssim": number("ssim_anonymised"), "psnr": number("psnr_anonymised"),
        "recovery": ({"ssim": number("ssim_recovered"), "psnr": number("psnr_recovered"),
                      "plr": number("plr_recovered")} if recovery else None),
    }


def _similarity_counts(name: str, original: jax.Array, other: jax.Array, mask: jax.Array) -> dict:
    """Summed SSIM and PSNR over every frame of the unmasked clips (B, T, H, W, 3)."""
    frame_mask = jnp.broadcast_to(mask[:, None], original.shape[:2]).astype(jnp.float32)
    return {f"{kind}_{name}": {"correct": jnp.sum(fn(original, other) * frame_mask), "total": jnp.sum(frame_mask)}
            for kind, fn in (("ssim", metrics.ssim), ("psnr", metrics.psnr))}


def figure_rows(ctx: Context, num_clips: int) -> tuple[list[np.ndarray], list[str]]:
    """For the first test clips of different people: original, low band, |high band|, then G and C of each method
    row (float, [0, 1])."""
    source = ctx.source("test")
    indices, seen = [], set()
    for index in range(len(source)):
        identity = int(source[index]["identity"])
        if identity not in seen:
            seen.add(identity)
            indices.append(index)
        if len(indices) == num_clips:
            break
    video = jnp.asarray(np.stack([source[i]["video"] for i in indices]))
    nets = ctx.nets
    frames = to_float(video)
    low, high = nets.split(frames.reshape((-1,) + frames.shape[2:]))
    shape = frames.shape
    full = lambda band: jnp.repeat(jnp.repeat(band, 2, axis=-3), 2, axis=-2).reshape(shape)  # noqa: E731
    detail = sum(jnp.abs(b) for b in jnp.split(high, wavelets.num_high_bands(False), axis=-1))
    shown = [("original", frames), ("low band /2", full(low) / 2.0),
             ("|high band|", full(detail) / jnp.maximum(jnp.max(detail), 1e-6))]
    for method, stages in ANONYMISER_STAGES.items():
        variables = {n: ctx.network(n, stage) for n, stage in stages.items()}
        shown += [(f"{method} G", nets.privatize(variables, frames)),
                  (f"{method} C", compensated_clips(nets, variables, video))]
    rows, labels = [], []
    for k, index in enumerate(indices):
        for name, x in shown:
            rows.append(np.clip(np.asarray(x[k]), 0.0, 1.0))
            labels.append(f"clip {index}: {name}")
    return rows, labels


def _expression_names(config):
    from data_pipelines.synthetic import EXPRESSIONS
    return EXPRESSIONS[: config.data.num_expressions]
