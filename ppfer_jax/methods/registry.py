"""The stages and method rows of ``ppfer-jax run``: the paper's PPFER (``ppfer.py``) and ``ppfer_robust``
(``robust.py``), in run order; which stage each row's anonymiser networks are loaded from, and the stages of the
F_u, frame attacker and clip attacker trained on each row's clips."""

from ppfer_jax.methods import ppfer, robust

STAGES = ppfer.STAGES + robust.STAGES
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}
ANONYMISER_STAGES = {"ppfer": ppfer.ANONYMISER_STAGES, robust.METHOD: robust.ANONYMISER_STAGES}
METHOD_ROWS = {"ppfer": {"utility": "s3/utility", "adaptive": "attack/adaptive", "clip": "attack/clip"},
               robust.METHOD: {"utility": "robust/utility", "adaptive": "robust/attack_adaptive",
                               "clip": "robust/attack_clip"}}
