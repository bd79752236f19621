"""An open-set, label-free privacy check: does a face verifier still match anonymised faces to their people?

Every other privacy number of the report is a closed-set classifier over the training people. This one needs no
identity label of the task's data, only a recognition prior: ``recognizer``, a face-embedding network (V_pl's
architecture) trained on the ``wild`` people alone (disjoint from every train/val/test person; on real data, a face
recogniser's converted weights via ``init_from``), frozen. Our definition (after the falsification-based validation
of Xu et al., ICME 2026, whose details are not public):

* the embedding is the recogniser's pooled features, L2-normalised; two frames match when their cosine similarity
  reaches a threshold fixed once on raw ``val`` frames (one per clip) at the equal error rate of same-person
  (different clips) against different-person pairs;
* on a row's test clips (one frame per clip): (a) ``same_clip_reject``, the share of (original, anonymised) pairs
  of the same clip the verifier rejects; (b) ``same_person_reject``, the share of same-person pairs of different
  anonymised clips it rejects; (c) ``auc``, the ROC-AUC of same- against different-person anonymised pairs (0.5:
  nothing of the person left for this verifier; raw frames give about 1).

Person labels enter only to score (b) and (c) and to fix the threshold, never to train anything.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import rankdata

from ppfer_jax import losses, metrics
from ppfer_jax.evaluation import GATHER, evaluator
from ppfer_jax.nets import pick_frames, random_frames, to_float
from ppfer_jax.stage import Stage, make_step, net_variables

RECOGNITION = "pretrain/recognition"


def embed(nets, variables: dict, frames: jax.Array, net: str = "recognizer") -> jax.Array:
    """L2-normalised recognition embeddings (N, D) of float frames (N, H, W, 3) by the ResNet ``net``."""
    _, state = nets.modules[net].apply({k: v for k, v in variables.items() if k == "params" or v}, frames,
                                                train=False, mutable=["intermediates"])
    features = state["intermediates"]["embedding"][0]
    return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-8)


def pair_scores(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarities of normalised embeddings: every (i, j) of a x b (b: a itself)."""
    return a @ (a if b is None else b).T


def same_and_different(scores: np.ndarray, people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The similarities of every unordered pair i < j of one set: (same-person pairs, different-person pairs)."""
    i, j = np.triu_indices(len(people), k=1)
    same = people[i] == people[j]
    return scores[i, j][same], scores[i, j][~same]


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half: the Mann-Whitney U over both sizes."""
    ranks = rankdata(np.concatenate([positive, negative]))  # ties share their average rank
    u = ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def equal_error_threshold(positive: np.ndarray, negative: np.ndarray) -> float:
    """The threshold t (accept: score >= t) where the false-reject rate of ``positive`` and the false-accept rate of
    ``negative`` are closest, among the observed scores."""
    candidates = np.unique(np.concatenate([positive, negative]))
    false_reject = np.searchsorted(np.sort(positive), candidates, side="left") / len(positive)
    false_accept = 1.0 - np.searchsorted(np.sort(negative), candidates, side="left") / len(negative)
    return float(candidates[np.argmin(np.abs(false_reject - false_accept))])


def verification_numbers(original: np.ndarray, anonymised: np.ndarray, people: np.ndarray,
                         threshold: float) -> dict:
    """(a), (b), (c) of the module docstring from normalised embeddings of the same clips' frames, in order."""
    same_clip = np.sum(original * anonymised, axis=-1)
    same, different = same_and_different(pair_scores(anonymised), people)
    return {"same_clip_reject": float(np.mean(same_clip < threshold)),
            "same_person_reject": float(np.mean(same < threshold)),
            "auc": roc_auc(same, different), "threshold": threshold}


def _gathered_embeddings(ctx, variables: dict, split: str, method: str | None = None, net: str = "recognizer"):
    """Embeddings of each clip's eval frame of a split (raw, or ``method``'s clips with their originals)."""
    nets = ctx.nets

    def counts(v, batch):
        out = {"embedding": embed(nets, v, pick_frames(to_float(batch["video"]), batch["eval_frame"]), net),
               "identity": batch["identity"]}
        if method is not None:
            out["original"] = embed(nets, v, pick_frames(to_float(batch["original"]), batch["eval_frame"]), net)
        return {GATHER: out}
    return evaluator(ctx, counts, split, method, originals=method is not None)(variables)[GATHER]


def val_threshold(ctx, variables: dict) -> float:
    """The equal-error threshold on raw val frames, one per clip."""
    val = _gathered_embeddings(ctx, variables, "val")
    return equal_error_threshold(*same_and_different(pair_scores(val["embedding"]), val["identity"]))


def verify(ctx, method: str | None, split: str, threshold: float) -> dict:
    """The verification numbers of a method's anonymised clips of ``split`` (None: the raw clips), at
    ``val_threshold``'s threshold (fixed once per call of ``reproduce``)."""
    variables = ctx.network("recognizer", RECOGNITION)
    clips = _gathered_embeddings(ctx, variables, split, method)
    return verification_numbers(clips.get("original", clips["embedding"]), clips["embedding"], clips["identity"],
                                threshold)


# -- the recognition prior


def _recognition_loss(nets, config, *, net: str):
    def loss_fn(params, batch_stats, frozen, batch, rng):
        frame = to_float(random_frames(rng, batch["video"]))
        logits, stats = nets.apply_train(net, params[net], batch_stats[net], frame)
        return losses.cross_entropy(logits, batch["identity"]), (
            {"acc": metrics.accuracy(logits, batch["identity"])}, {net: stats})
    return loss_fn


def _recognition_eval(ctx, *, net: str):
    """Val: the verification AUC of raw frames (the wild people's classes mean nothing on val's people)."""
    def eval_fn(state) -> dict:
        val = _gathered_embeddings(ctx, net_variables(state, net), "val", net=net)
        return {"val_auc": roc_auc(*same_and_different(pair_scores(val["embedding"]), val["identity"]))}
    return eval_fn


def recognition_stage(name: str, train_key: str, net: str, evaluate=None) -> Stage:
    """A face-embedding ResNet ``net`` trained as a classifier of the wild people (one random frame per clip);
    ``evaluate``: its eval builder (default: the verification AUC on raw val frames)."""
    return Stage(name, train_key, (net,), (), "wild", None, make_step(functools.partial(_recognition_loss, net=net)),
                 evaluate or functools.partial(_recognition_eval, net=net))


RECOGNITION_STAGE = recognition_stage(RECOGNITION, "pretrain_recognition", "recognizer")
