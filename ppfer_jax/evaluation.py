"""The evaluation loop every stage and report shares, and the row scoring of Tables 1-4.

``evaluator`` is the one loop: a jitted ``counts_fn(state, batch)`` over a split, padded batches masked, summed
over batches and processes. Its contract: every metric is ``{"sum", "count"}`` and comes back as sum / count; a
bare array (a confusion matrix) is a tally and comes back summed; arrays under ``GATHER`` come back row by row
(masked rows dropped, every process's rows), for attackers fit after the pass.

A row of Table 1 (and of ``reproduce``'s tables) is scored by ``row_counts``, one way for every row. Every privacy
number names its attacker:

* PLR: the frozen V_pl on ONE frame per test clip (the fixed ``eval_frame`` drawn from the config seed). Chance
  is 1 / number of identities.
* permuted PLR (the relabelling check, no training): V_pl's confusion matrix scored under the best one-to-one
  relabelling. A PLR at chance with a high permuted PLR means the enhancers relabel people, not hide them.
* adaptive PLR: a fresh identity classifier (V_pl's architecture) trained on the row's anonymised training
  frames, on the same test frames. For No privacy the fresh classifier on raw frames *is* V_pl.
* adaptive clip PLR: a fresh clip classifier (F_u's R3D) trained on identity from the row's anonymised
  training clips, on whole test clips.
* ACC / per-class ACC: F_u trained on the row's (anonymised, uint8) training clips, on its test clips.
* SSIM / PSNR between original and anonymised frames, all frames, images clipped to [0, 1].

``evaluate`` makes ``ppfer-jax run``'s numbers: No privacy and the method rows in one pass over the test clips
(anonymised on the fly, rounded to uint8 as stored), plus what only that pass sees (V_pl and SSIM on G, before
compensation). ``evaluate_method`` scores one row of ``ppfer-jax reproduce`` on its stored anonymised test clips,
plus its recovery attacker's reconstructions (Table 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.multihost_utils import process_allgather

from data_pipelines.labels import EXPRESSIONS
from data_pipelines.loader import MASK, iterate_once
from ppfer_jax import metrics, wavelets
from ppfer_jax.nets import flatten_frames, pick_frames, to_float, to_uint8
from ppfer_jax.parallel import global_batch
from ppfer_jax.training import read_summary

GATHER = "gathered"


def evaluator(ctx, counts_fn, split: str, method: str | None = None, *, originals: bool = False):
    """eval_fn(state) -> {metric: value}: ``counts_fn`` over one pass of a split (raw, or anonymised by
    ``method``; ``originals``: batches also hold the raw clips), under the contract above."""
    jitted = jax.jit(counts_fn)

    def eval_fn(state) -> dict:
        sums, gathered = None, []
        for batch in iterate_once(ctx.source(split, method, with_originals=originals), ctx.eval_batch_size):
            batch = global_batch(batch, ctx.mesh)
            out = jitted(state, batch)
            if GATHER in out:
                rows = process_allgather({**out.pop(GATHER), MASK: batch[MASK]}, tiled=True)
                keep = np.asarray(rows.pop(MASK), bool)
                gathered.append({k: np.asarray(v)[keep] for k, v in rows.items()})
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        result = summarise(jax.device_get(sums))
        if gathered:
            result[GATHER] = {k: np.concatenate([part[k] for part in gathered]) for k in gathered[0]}
        return result
    return eval_fn


def summarise(sums: dict) -> dict:
    """Summed counts to numbers: {sum, count} -> sum / count, a bare array stays a tally, a dict of metrics (a
    row) is summarised in turn."""
    def one(v):
        if isinstance(v, dict) and set(v) == {"sum", "count"}:
            return metrics.ratio(v["sum"], v["count"])
        if isinstance(v, dict):
            return summarise(v)
        return np.asarray(v)
    return {name: one(v) for name, v in sums.items()}


def row_counts(nets, config, v: dict, video, batch) -> dict:
    """One row's counts on its (anonymised) float test clips: V_pl's PLR with its confusion, F_u's ACC per
    class, and the frame / clip attackers of ``v`` where it holds them."""
    ids, exprs, mask = batch["identity"], batch["expression"], batch["mask"]
    frame = pick_frames(video, batch["eval_frame"])
    validator = nets.apply("v_pl", v["v_pl"], frame)
    utility = nets.apply("f_u", v["f_u"], video)
    out = {"plr": metrics.correct_counts(validator, ids, mask),
           "confusion": metrics.confusion_counts(validator, ids, config.data.num_identities, mask),
           "acc": metrics.correct_counts(utility, exprs, mask),
           "per_class": metrics.per_class_counts(jnp.argmax(utility, -1), exprs, config.data.num_expressions,
                                                 mask)}
    if "attacker" in v:
        out["adaptive_plr"] = metrics.correct_counts(nets.apply("attacker", v["attacker"], frame), ids, mask)
    if "clip_attacker" in v:
        out["adaptive_plr_clip"] = metrics.correct_counts(nets.apply("clip_attacker", v["clip_attacker"], video),
                                                          ids, mask)
    return out


def table1_row(numbers: dict, *, raw: bool = False) -> dict:
    """A row's Table 1 numbers from its summarised counts (None: no such attacker); on raw clips the frame
    attacker trained afresh on raw frames is V_pl itself."""
    number = lambda key: float(numbers[key]) if key in numbers else None  # noqa: E731
    return {"plr": number("plr"), "plr_permuted": metrics.permuted_accuracy(numbers["confusion"]),
            "adaptive_plr": number("plr" if raw else "adaptive_plr"),
            "adaptive_plr_clip": number("adaptive_plr_clip"), "acc": number("acc")}


def evaluate(ctx, anonymiser_stages: dict, method_rows: dict) -> dict:
    """All numbers of ``ppfer-jax run``'s report, as plain Python floats/lists: No privacy and each method row
    (``method_rows``: row -> its utility / adaptive / clip stages; ``anonymiser_stages``: row -> the stage of
    each of its anonymiser networks)."""
    nets, config = ctx.nets, ctx.config
    num_expr, num_ids = config.data.num_expressions, config.data.num_identities
    variables = {"no_privacy": {"v_pl": ctx.network("v_pl"), "f_u": ctx.network("f_u", "no_privacy"),
                                "clip_attacker": ctx.network("clip_attacker", "attack/clip_raw")}}
    for method, stages in method_rows.items():
        variables[method] = {
            **{n: ctx.network(n, stage) for n, stage in anonymiser_stages[method].items()},
            "v_pl": variables["no_privacy"]["v_pl"], "f_u": ctx.network("f_u", stages["utility"]),
            "attacker": ctx.network("attacker", stages["adaptive"]),
            "clip_attacker": ctx.network("clip_attacker", stages["clip"])}

    def counts(v, batch):
        frames = to_float(batch["video"])
        out = {"no_privacy": row_counts(nets, config, v["no_privacy"], frames, batch)}
        for method in method_rows:
            mv = v[method]
            g = nets.privatize(mv, frames)
            c = to_float(to_uint8(nets.compensate(mv["f_fc"], g)))  # the anonymised video, as stored
            out[method] = {**row_counts(nets, config, mv, c, batch),
                           "plr_g": metrics.correct_counts(nets.apply("v_pl", mv["v_pl"],
                                                                      pick_frames(g, batch["eval_frame"])),
                                                           batch["identity"], batch["mask"]),
                           **_similarity_counts("c", frames, c, batch["mask"]),
                           **_similarity_counts("g", frames, g, batch["mask"])}
        return out

    r = evaluator(ctx, counts, "test")(variables)
    identity = read_summary(ctx.workdir, "pretrain/identity")["eval"]
    privacy = read_summary(ctx.workdir, "s1/privacy")
    robust = read_summary(ctx.workdir, "robust/privacy")
    expression = read_summary(ctx.workdir, "pretrain/expression")["eval"]
    rows = ("no_privacy",) + tuple(method_rows)
    return {
        "data": f"{config.data.name} test split",
        "num_test_clips": len(ctx.source("test")),
        "num_identities": num_ids,
        "chance_plr": 1.0 / num_ids,
        "chance_acc": 1.0 / num_expr,
        "expressions": list(EXPRESSIONS[:num_expr]),
        "attackers": attacker_budgets(config),
        "table1": {row: table1_row(r[row], raw=row == "no_privacy") for row in rows},
        "table2": {row: [float(x) for x in r[row]["per_class"]] for row in rows},
        "fidelity": {m: {"ssim": float(r[m]["ssim_c"]), "psnr": float(r[m]["psnr_c"]),
                         "ssim_g": float(r[m]["ssim_g"]), "psnr_g": float(r[m]["psnr_g"])} for m in method_rows},
        "plr_before_compensation": {m: float(r[m]["plr_g"]) for m in method_rows},
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
                             "held-out ridge attacker on the code (val)":
                                 robust["best"]["metrics"]["held_out_attacker_acc"],
                             "code's expression head (val)": robust["best"]["metrics"]["expression_acc"],
                             "C_fc on G (val)": robust["best"]["metrics"]["c_fc_acc_on_g"]},
        "expression_controller": {"C_fc on clean val frames": expression["c_fc_acc_val_frames"],
                                  **{f"C_fc on {kind} ({m}, val)":
                                     read_summary(ctx.workdir, stages["f_fc"])["eval"][key]
                                     for m, stages in anonymiser_stages.items()
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


def evaluate_method(ctx, method: str | None, *, utility: str, adaptive: str | None = None,
                    clip: str | None = None, recovery: str | None = None) -> dict:
    """One row of Tables 1-4 on the test split: a method's stored anonymised test clips (``method``; None: the raw
    clips) scored by ``row_counts`` with the F_u of stage ``utility`` and the attackers of stages ``adaptive``
    and ``clip``, their SSIM / PSNR to the originals, and, with a ``recovery`` stage, the recovery attacker's
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
        video, mask = to_float(batch["video"]), batch["mask"]
        out = row_counts(nets, config, v, video, batch)
        if "original" in batch:
            original = to_float(batch["original"])
            out.update(_similarity_counts("anonymised", original, video, mask))
            if "recovery" in v:
                recovered = recover(nets, v["recovery"], video)
                out.update(_similarity_counts("recovered", original, recovered, mask))
                out["plr_recovered"] = metrics.correct_counts(
                    nets.apply("v_pl", v["v_pl"], pick_frames(recovered, batch["eval_frame"])), batch["identity"],
                    mask)
        return out

    r = evaluator(ctx, counts, "test", method, originals=method is not None)(variables)
    number = lambda key: float(r[key]) if key in r else None  # noqa: E731
    return {
        **table1_row(r, raw=method is None),
        "per_class": [float(x) for x in r["per_class"]],
        "ssim": number("ssim_anonymised"), "psnr": number("psnr_anonymised"),
        "recovery": ({"ssim": number("ssim_recovered"), "psnr": number("psnr_recovered"),
                      "plr": number("plr_recovered")} if recovery else None),
    }


def recover(nets, variables: dict, frames: jax.Array) -> jax.Array:
    """The recovery attacker's reconstruction of float frames (..., H, W, 3), clipped to the image range."""
    flat, lead = flatten_frames(frames)
    return jnp.clip(nets.apply("recovery", variables, flat), 0.0, 1.0).reshape(lead + flat.shape[1:])


def _similarity_counts(name: str, original: jax.Array, other: jax.Array, mask: jax.Array) -> dict:
    """Summed SSIM and PSNR over every frame of the unmasked clips (B, T, H, W, 3)."""
    frame_mask = jnp.broadcast_to(mask[:, None], original.shape[:2]).astype(jnp.float32)
    return {f"{kind}_{name}": {"sum": jnp.sum(fn(original, other) * frame_mask), "count": jnp.sum(frame_mask)}
            for kind, fn in (("ssim", metrics.ssim), ("psnr", metrics.psnr))}


def figure_rows(ctx, anonymiser_stages: dict, num_clips: int) -> tuple[list[np.ndarray], list[str]]:
    """For the first test clips of different people: original, low band, |high band|, then G and C of each method
    row (``anonymiser_stages``: row -> the stage of each anonymiser network), float in [0, 1]."""
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
    low, high = nets.bands(frames.reshape((-1,) + frames.shape[2:]))
    shape = frames.shape
    full = lambda band: jnp.repeat(jnp.repeat(band, 2, axis=-3), 2, axis=-2).reshape(shape)  # noqa: E731
    detail = sum(jnp.abs(b) for b in jnp.split(high, wavelets.num_high_bands(False), axis=-1))
    shown = [("original", frames), ("low band /2", full(low) / 2.0),
             ("|high band|", full(detail) / jnp.maximum(jnp.max(detail), 1e-6))]
    @jax.jit
    def g_and_c(variables, frames):
        g = nets.privatize(variables, frames)
        return g, nets.compensate(variables["f_fc"], g)

    for method, stages in anonymiser_stages.items():
        g, c = g_and_c({n: ctx.network(n, stage) for n, stage in stages.items()}, frames)
        shown += [(f"{method} G", g), (f"{method} C", c)]
    rows, labels = [], []
    for k, index in enumerate(indices):
        for name, x in shown:
            rows.append(np.clip(np.asarray(x[k]), 0.0, 1.0))
            labels.append(f"clip {index}: {name}")
    return rows, labels

