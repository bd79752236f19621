"""The ``evaluate`` stage: Table 1 / Table 2 numbers on the test split through the whole chain.

* ACC / per-class ACC: F_u on anonymised (compensated, uint8) test clips (PPFER row) and F_u trained
  on raw clips, on raw test clips (No-privacy row).
* PLR: the frozen V_pl on ONE frame per test clip (the fixed ``eval_frame`` drawn
  from the config seed), compensated (PPFER) or raw (No privacy). Chance is
  1 / number of identities.
* adaptive PLR: a fresh identity classifier (V_pl's architecture) trained on
  compensated training frames (stage ``attack/adaptive``), on the same test
  frames. For the No-privacy row the fresh classifier trained on raw training
  frames *is* V_pl, so its adaptive PLR equals its PLR.
* SSIM / PSNR between original and compensated (and privacy-preserved G) test
  frames, all frames, images clipped to [0, 1].

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
from ppfer_jax.parallel import global_batch
from ppfer_jax.training import read_summary


def evaluate(ctx: Context) -> dict:
    """All numbers of the report, as plain Python floats/lists."""
    nets, config = ctx.nets, ctx.config
    num_expr = config.data.num_expressions
    variables = {
        "v_pl": ctx.network("v_pl"), "f_low": ctx.network("f_low"), "f_high": ctx.network("f_high"),
        "f_fc": ctx.network("f_fc"), "attacker": ctx.network("attacker"),
        "f_u_private": ctx.network("f_u", "s3/utility"), "f_u_raw": ctx.network("f_u", "no_privacy"),
    }

    def counts(v, batch):
        video, mask = batch["video"], batch["mask"]
        frames = to_float(video)
        g = nets.privatize(v, frames)
        c = to_float(to_uint8(nets.compensate(v["f_fc"], g)))  # the anonymised video, as stored
        pick = lambda x: pick_frames(x, batch["eval_frame"])  # noqa: E731
        ids, exprs = batch["identity"], batch["expression"]
        out = {
            "plr_ppfer": metrics.correct_counts(nets.apply("v_pl", v["v_pl"], pick(c)), ids, mask),
            "plr_g": metrics.correct_counts(nets.apply("v_pl", v["v_pl"], pick(g)), ids, mask),
            "plr_raw": metrics.correct_counts(nets.apply("v_pl", v["v_pl"], pick(frames)), ids, mask),
            "adaptive_plr_ppfer": metrics.correct_counts(nets.apply("attacker", v["attacker"], pick(c)), ids, mask),
        }
        for row, clips, net in (("ppfer", c, "f_u_private"), ("raw", frames, "f_u_raw")):
            logits = nets.apply("f_u", v[net], clips)
            out[f"acc_{row}"] = metrics.correct_counts(logits, exprs, mask)
            out[f"per_class_{row}"] = metrics.per_class_counts(jnp.argmax(logits, -1), exprs, num_expr, mask)
        for name, other in (("c", c), ("g", g)):
            out.update(_similarity_counts(name, frames, other, mask))
        return out

    jitted = jax.jit(counts)
    sums = None
    for batch in iterate_once(ctx.source("test"), ctx.eval_batch_size):
        out = jitted(variables, global_batch(batch, ctx.mesh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    r = {name: metrics.ratio(v["correct"], v["total"]) for name, v in sums.items()}

    identity = read_summary(ctx.workdir, "pretrain/identity")["eval"]
    privacy = read_summary(ctx.workdir, "s1/privacy")
    compensation = read_summary(ctx.workdir, "s2/compensation")["eval"]
    expression = read_summary(ctx.workdir, "pretrain/expression")["eval"]
    chance = 1.0 / config.data.num_identities
    return {
        "num_test_clips": int(round(float(sums["acc_raw"]["total"]))),
        "num_identities": config.data.num_identities,
        "chance_plr": chance,
        "chance_acc": 1.0 / num_expr,
        "expressions": list(_expression_names(config)),
        "table1": {
            "no_privacy": {"plr": r["plr_raw"], "adaptive_plr": r["plr_raw"], "acc": r["acc_raw"]},
            "ppfer": {"plr": r["plr_ppfer"], "adaptive_plr": r["adaptive_plr_ppfer"], "acc": r["acc_ppfer"]},
        },
        "table2": {"no_privacy": [float(x) for x in r["per_class_raw"]],
                   "ppfer": [float(x) for x in r["per_class_ppfer"]]},
        "plr_before_compensation": r["plr_g"],
        "controllers_clean_accuracy": {"C_lpr (low band)": identity["c_low_acc"],
                                       "C_hpr (high band)": identity["c_high_acc"],
                                       "V_pl (frames)": identity["v_pl_acc"]},
        "controllers_after_privacy": {"C_lpr on F_lpr(low)": privacy["best"]["metrics"]["c_low_acc"],
                                      "C_hpr on F_hpr(high)": privacy["best"]["metrics"]["c_high_acc"],
                                      "selected_step": privacy["best"]["step"]},
        "expression_controller": {"C_fc on clean val frames": expression["c_fc_acc_val_frames"],
                                  "C_fc on G": compensation["c_fc_acc_on_g"],
                                  "C_fc on C": compensation["c_fc_acc_on_c"]},
        "ssim": {"original_vs_C": r["ssim_c"], "original_vs_G": r["ssim_g"]},
        "psnr_db": {"original_vs_C": r["psnr_c"], "original_vs_G": r["psnr_g"]},
    }


def evaluate_method(ctx: Context, method: str | None, *, utility: str, adaptive: str | None = None,
                    recovery: str | None = None) -> dict:
    """One row of Tables 1-4 on the test split: a method's anonymised test clips (``method``; None: the raw
    clips) scored by the frozen V_pl (PLR), the attacker of stage ``adaptive`` (adaptive PLR), the F_u of stage
    ``utility`` (ACC, per class), their SSIM / PSNR to the originals, and, with a ``recovery`` stage, the
    recovery attacker's reconstructions (Table 3: SSIM, PSNR, V_pl's PLR on them)."""
    nets, config = ctx.nets, ctx.config
    variables = {"v_pl": ctx.network("v_pl"), "f_u": ctx.network("f_u", utility)}
    if adaptive:
        variables["attacker"] = ctx.network("attacker", adaptive)
    if recovery:
        variables["recovery"] = ctx.network("recovery", recovery)

    def counts(v, batch):
        video, mask, ids, exprs = to_float(batch["video"]), batch["mask"], batch["identity"], batch["expression"]
        pick = lambda x: pick_frames(x, batch["eval_frame"])  # noqa: E731
        logits = nets.apply("f_u", v["f_u"], video)
        out = {"plr": metrics.correct_counts(nets.apply("v_pl", v["v_pl"], pick(video)), ids, mask),
               "acc": metrics.correct_counts(logits, exprs, mask),
               "per_class": metrics.per_class_counts(jnp.argmax(logits, -1), exprs, config.data.num_expressions,
                                                     mask)}
        if "attacker" in v:
            out["adaptive_plr"] = metrics.correct_counts(nets.apply("attacker", v["attacker"], pick(video)), ids, mask)
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
        "adaptive_plr": number("adaptive_plr") if adaptive else (number("plr") if method is None else None),
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
    """For the first test clips of different people: original, low band, |high band|, G, C (float, [0, 1])."""
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
    variables = {n: ctx.network(n) for n in ("f_low", "f_high", "f_fc")}
    nets = ctx.nets
    frames = to_float(video)
    low, high = nets.split(frames.reshape((-1,) + frames.shape[2:]))
    c = compensated_clips(nets, variables, video)
    g = nets.privatize(variables, frames)
    shape = frames.shape
    full = lambda band: jnp.repeat(jnp.repeat(band, 2, axis=-3), 2, axis=-2).reshape(shape)  # noqa: E731
    detail = sum(jnp.abs(b) for b in jnp.split(high, wavelets.num_high_bands(False), axis=-1))
    rows, labels = [], []
    for k, index in enumerate(indices):
        for name, x in (("original", frames), ("low band /2", full(low) / 2.0),
                        ("|high band|", full(detail) / jnp.maximum(jnp.max(detail), 1e-6)),
                        ("G", g), ("C", c)):
            rows.append(np.clip(np.asarray(x[k]), 0.0, 1.0))
            labels.append(f"clip {index}: {name}")
    return rows, labels


def _expression_names(config):
    from data_pipelines.synthetic import EXPRESSIONS
    return EXPRESSIONS[: config.data.num_expressions]
