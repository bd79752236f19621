"""s3/utility and no_privacy: the utility model F_u (R3D-18) learns expression from whole clips."""

from __future__ import annotations

from ppfer_jax.stage import Stage
from ppfer_jax.stages.classifiers import clip_classifier_stage


def utility_stage(name: str, method: str | None) -> Stage:
    """F_u trained on a method's anonymised clips (``train.utility``), or on the raw clips (``train.no_privacy``)."""
    return clip_classifier_stage(name, "no_privacy" if method is None else "utility", "f_u", "expression", method)
