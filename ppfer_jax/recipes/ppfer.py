"""The paper's method as stages: pretraining, Algorithm 1, Algorithm 2, the utility model, and the attackers
trained afresh on its anonymised clips (plus No privacy's F_u and clip attacker on the raw clips)."""

from __future__ import annotations

from data_pipelines.sources import ArraySource
from ppfer_jax.anonymised import map_clips
from ppfer_jax.attacks import adaptive_attack_stage, clip_attack_stage
from ppfer_jax.nets import WAVELET, compensated_clips, to_uint8
from ppfer_jax.stages.compensation import compensation_stage
from ppfer_jax.stages.pretrain import enhancer_pretrain_stage, expression_controller_stage, identity_stage
from ppfer_jax.stages.privacy import privacy_stage
from ppfer_jax.stages.utility import utility_stage

METHOD = "ppfer"
STAGES = (
    identity_stage("pretrain/identity"),
    enhancer_pretrain_stage("pretrain/enhancer", "pretrain_enhancer", WAVELET),
    expression_controller_stage("pretrain/expression"),
    privacy_stage("s1/privacy", WAVELET, start="pretrain/enhancer"),
    compensation_stage("s2/compensation", WAVELET),
    utility_stage("s3/utility", METHOD),
    utility_stage("no_privacy", None),
    adaptive_attack_stage("attack/adaptive", METHOD),
    clip_attack_stage("attack/clip", METHOD),
    clip_attack_stage("attack/clip_raw", None),
)
ANONYMISER_STAGES = {"f_low": "s1/privacy", "f_high": "s1/privacy", "f_fc": "s2/compensation"}
ROW = {"utility": "s3/utility", "adaptive": "attack/adaptive", "clip": "attack/clip"}


def anonymised_clips(ctx, split: str, method: str, anonymiser_stages: dict) -> ArraySource:
    """A split anonymised by a trained PPFER chain C = F_fc(merge(F_lpr(low), F_hpr(high))), its networks loaded
    from ``anonymiser_stages``, as uint8 video."""
    frozen = {n: ctx.network(n, stage) for n, stage in anonymiser_stages.items()}
    return map_clips(ctx, ctx.source(split), lambda video: to_uint8(compensated_clips(ctx.nets, frozen, video)))
