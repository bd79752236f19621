"""The stages and method rows of ``ppfer-jax run``: the paper's PPFER and ``ppfer_robust``, in run order; which
stage each row's anonymiser networks are loaded from, the stages of the F_u, frame attacker and clip attacker
trained on each row's clips, and (where the data has them) the attackers of people no stage saw."""

from __future__ import annotations

import functools

from ppfer_jax.anonymised import AnonymisedSplits
from ppfer_jax.context import Context
from ppfer_jax.recipes import openset, ppfer, robust

STAGES = ppfer.STAGES + robust.STAGES + openset.STAGES
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}
ANONYMISER_STAGES = {ppfer.METHOD: ppfer.ANONYMISER_STAGES, robust.METHOD: robust.ANONYMISER_STAGES}
METHOD_ROWS = {ppfer.METHOD: ppfer.ROW, robust.METHOD: robust.ROW}


MAKERS = {method: functools.partial(ppfer.anonymised_clips, anonymiser_stages=stages)
          for method, stages in ANONYMISER_STAGES.items()}  # each method row's anonymised-split maker


def stages_for(config) -> tuple:
    """The stages a run of ``config`` trains, in run order: all, but the open-set ones where its data has no
    people no stage sees."""
    return tuple(stage for stage in STAGES if openset.applies(config) or stage not in openset.STAGES)


def context(config, workdir, mesh, *, keep_originals: bool = False, more_makers: dict | None = None) -> Context:
    """The Context of a ``run``: its stages, and the anonymised splits of its method rows (and of
    ``more_makers``' methods)."""
    return Context(config, workdir, mesh, stages=STAGE_BY_NAME,
                   splits=AnonymisedSplits({**MAKERS, **(more_makers or {})}, keep_originals=keep_originals))
