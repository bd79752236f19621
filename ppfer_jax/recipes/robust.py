"""``ppfer_robust``: the paper's pipeline with Algorithm 1 made robust (``stages/robust_privacy.py``: code
autoencoders per band, identity erased from the code), then the paper's Algorithm 2, the utility model and the
attackers on its clips."""

from __future__ import annotations

from ppfer_jax.attacks import adaptive_attack_stage, clip_attack_stage
from ppfer_jax.nets import CODE
from ppfer_jax.stages.compensation import compensation_stage
from ppfer_jax.stages.robust_privacy import robust_privacy_stage
from ppfer_jax.stages.utility import utility_stage

METHOD = "ppfer_robust"
PRIVACY = "robust/privacy"
STAGES = (
    robust_privacy_stage(PRIVACY),
    compensation_stage("robust/compensation", CODE, sources={"r_low": PRIVACY, "r_high": PRIVACY}),
    utility_stage("robust/utility", METHOD),
    adaptive_attack_stage("robust/attack_adaptive", METHOD),
    clip_attack_stage("robust/attack_clip", METHOD),
)
ANONYMISER_STAGES = {"r_low": PRIVACY, "r_high": PRIVACY, "f_fc": "robust/compensation"}
ROW = {"utility": "robust/utility", "adaptive": "robust/attack_adaptive", "clip": "robust/attack_clip"}
