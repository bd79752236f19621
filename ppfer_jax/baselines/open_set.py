"""The open-set, identity-label-free method (Xu et al., ICME 2026) as a row of ``reproduce``.

Only its abstract is public. What it states: two stages and no identity labels at any stage; an identity-suppression
network trained with intra- and inter-video knowledge priors from real-world videos; a denoising module that
restores expression information; privacy validated with recognition priors instead of identity labels. Ours, in
that shape:

* the recognition prior ``os_prior``: a face-embedding ResNet (V_pl's architecture) trained on the ``wild`` people
  alone, whose identity labels stand in for a pretrained face recogniser (``open_set/prior``; its own weights, not
  the report's verifier, so the method is never scored by the network it trained against), then frozen;
* suppression ``os_suppressor``: a U-Net on frames with the residual head (it starts as the identity map). Each step
  takes two different frames of each clip: the intra-video prior says they show one person, the inter-video prior
  that frames of other clips show others. Under the frozen prior's embedding, each clip's first frame must not pick
  out its own second frame among the second frames of the batch's clips of the *same expression* (so expression
  cannot tell them apart): the softmax over cosine similarities / ``temperature`` is pushed to uniform (KL), plus
  ``fidelity_weight`` x L1 to the frame (``open_set/suppress``);
* denoising: Algorithm 2's compensator F_fc on the suppressed frames against the frozen expression controller C_fc
  (trained on the wild clips' expressions), ``open_set/denoise``;
* every stage reads the task's clips through ``unlabelled``, a view without the ``identity`` field: no identity
  label of train, val or test reaches it. Its own validation (val, label-free): how well the prior tells two
  frames of one clip from frames of other clips, before and after suppression (ROC-AUC).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ppfer_jax import losses
from ppfer_jax.anonymised import map_clips
from ppfer_jax.evaluation import GATHER, evaluator
from ppfer_jax.nets import Privatizer, compensated_clips, pick_frames, to_float, to_uint8
from ppfer_jax.stage import Stage, make_step, net_variables
from ppfer_jax.stages.compensation import compensation_stage
from ppfer_jax.verification import embed, recognition_stage, roc_auc

UNLABELLED = "unlabelled"  # the method name of the raw clips without their identity labels
SUPPRESSOR = Privatizer(("os_suppressor",), ("os_prior",), wavelet=False)


def unlabelled_clips(ctx, split: str, method: str):
    """A split's raw clips without the ``identity`` field."""
    source = map_clips(ctx, ctx.source(split), lambda video: video)
    return type(source)({k: v for k, v in source.arrays.items() if k != "identity"})


def two_frames(rng: jax.Array, video: jax.Array) -> jax.Array:
    """Two different random frames of each clip: (B, 2, H, W, 3)."""
    first_key, gap_key = jax.random.split(rng)
    first = jax.random.randint(first_key, (video.shape[0],), 0, video.shape[1])
    second = (first + jax.random.randint(gap_key, (video.shape[0],), 1, video.shape[1])) % video.shape[1]
    return pick_frames(video, jnp.stack([first, second], axis=1))


def indistinguishability(first: jax.Array, second: jax.Array, expression: jax.Array, temperature: float):
    """(KL(uniform || p) averaged over clips, the share of clips whose own second frame is the most similar), where
    p is the softmax over each clip's first-frame similarity to the second frames of the clips of its expression
    (its own included); embeddings are normalised, (B, D) each."""
    candidates = expression[:, None] == expression[None, :]
    logits = jnp.where(candidates, first @ second.T / temperature, -1e9)
    log_p = jax.nn.log_softmax(logits, axis=1)
    count = jnp.sum(candidates, axis=1)
    kl = -jnp.log(count) - jnp.sum(jnp.where(candidates, log_p, 0.0), axis=1) / count
    return jnp.mean(kl), jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(len(first)))


def _suppression_loss(nets, config):
    section = config.baselines.open_set

    def loss_fn(params, batch_stats, frozen, batch, rng):
        pair = to_float(two_frames(rng, batch["video"]))
        flat = pair.reshape((-1,) + pair.shape[2:])
        out, stats = nets.apply_train("os_suppressor", params["os_suppressor"], batch_stats["os_suppressor"], flat)
        e = embed(nets, frozen["os_prior"], out, "os_prior").reshape(pair.shape[:2] + (-1,))
        privacy, own_found = indistinguishability(e[:, 0], e[:, 1], batch["expression"], section.temperature)
        fidelity = losses.l1(out, flat)
        total = section.privacy_weight * privacy + section.fidelity_weight * fidelity
        return total, ({"indistinguishability_kl": privacy, "own_clip_found": own_found, "fidelity_l1": fidelity},
                       {"os_suppressor": stats})
    return loss_fn


def _eval_pair(batch) -> jax.Array:
    """Two fixed frames of each val clip (its eval frame and the one half a clip later), flattened (2B, H, W, 3)."""
    video = to_float(batch["video"])
    index = jnp.stack([batch["eval_frame"], (batch["eval_frame"] + video.shape[1] // 2) % video.shape[1]], axis=1)
    pair = pick_frames(video, index)
    return pair.reshape((-1,) + pair.shape[2:])


def _prior_eval(ctx):
    """Val, label-free: how well the prior alone tells two frames of one clip from frames of other clips."""
    def counts(state, batch):
        e = embed(ctx.nets, net_variables(state, "os_prior"), _eval_pair(batch), "os_prior")
        return {GATHER: {"raw": e.reshape((len(batch["video"]), 2, -1))}}
    evaluate = evaluator(ctx, counts, "val", UNLABELLED)
    return lambda state: {"same_clip_auc_raw": same_clip_auc(evaluate(state)[GATHER]["raw"])}


def _suppression_eval(ctx):
    """Val, label-free: the prior's ROC-AUC of same-clip against other-clip frame pairs, raw and suppressed."""
    nets = ctx.nets

    def counts(state, batch):
        flat = _eval_pair(batch)
        out = nets.apply("os_suppressor", net_variables(state, "os_suppressor"), flat)
        prior, shape = state.frozen["os_prior"], (len(batch["video"]), 2, -1)
        return {GATHER: {"raw": embed(nets, prior, flat, "os_prior").reshape(shape),
                         "suppressed": embed(nets, prior, out, "os_prior").reshape(shape)},
                "fidelity_l1": {"sum": jnp.sum(jnp.mean(jnp.abs(out - flat), axis=(1, 2, 3))),
                                "count": jnp.float32(len(flat))}}
    evaluate = evaluator(ctx, counts, "val", UNLABELLED)

    def eval_fn(state) -> dict:
        result = evaluate(state)
        gathered = result.pop(GATHER)
        for kind in ("raw", "suppressed"):
            result[f"same_clip_auc_{kind}"] = same_clip_auc(gathered[kind])
        return result
    return eval_fn


def same_clip_auc(pairs: np.ndarray) -> float:
    """ROC-AUC of the similarities of the two frames of one clip against those of frames of different clips;
    ``pairs`` (N, 2, D) normalised embeddings."""
    scores = pairs[:, 0] @ pairs[:, 1].T
    return roc_auc(np.diag(scores), scores[~np.eye(len(scores), dtype=bool)])


PRIOR = recognition_stage("open_set/prior", "open_set_prior", "os_prior", _prior_eval)
SUPPRESS = Stage("open_set/suppress", "open_set_suppress", ("os_suppressor",), ("os_prior",), "train", UNLABELLED,
                 make_step(_suppression_loss), _suppression_eval, sources={"os_prior": PRIOR.name})
DENOISE = compensation_stage("open_set/denoise", SUPPRESSOR, sources={"os_suppressor": SUPPRESS.name},
                             train_key="open_set_denoise", method=UNLABELLED, leakage=False)
STAGES = (PRIOR, SUPPRESS, DENOISE)


def anonymised_clips(ctx, split: str, method: str):
    """A split suppressed and denoised by the trained networks."""
    variables = {"os_suppressor": ctx.network("os_suppressor", SUPPRESS.name),
                 "f_fc": ctx.network("f_fc", DENOISE.name)}
    return map_clips(ctx, ctx.source(split),
                     lambda video: to_uint8(compensated_clips(ctx.nets, variables, video, SUPPRESSOR)))
