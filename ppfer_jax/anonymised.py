"""The anonymised splits of a run: every clip of a data split passed once through a method, kept in memory.

The stages downstream of an anonymiser (the utility model, the attackers) train on what a deployment hands on --
uint8 video -- rather than recomputing the frozen chain in each of their steps, which would cost more than
training them. A method is named ``family[/detail]`` (``ppfer``, ``blur/sigma_2``); each family has a maker
``(ctx, split, method) -> ArraySource``, usually built on ``map_clips``.

On one host a split, once made, is also written to ``workdir/anonymised/<method>/<split>.npz`` (under a lock), so
the other processes of ``run --jobs`` / ``reproduce --jobs`` read it instead of making it again; the folder may be
deleted once the run is finished.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.experimental.multihost_utils import process_allgather

from data_pipelines.files import write_atomically
from data_pipelines.loader import MASK, iterate_once
from data_pipelines.sources import ArraySource
from ppfer_jax import jobs
from ppfer_jax.parallel import global_batch

DIRECTORY = "anonymised"


class AnonymisedSplits:
    """The makers of a run's methods and the splits they made, each computed once. With ``keep_originals`` every
    anonymised split also holds the raw clips as ``original`` (the recovery attack's targets); readers get a view
    without them unless they ask."""

    def __init__(self, makers: dict[str, Callable], *, keep_originals: bool = False):
        self.makers = dict(makers)
        self.keep_originals = keep_originals
        self._made: dict[tuple[str, str], ArraySource] = {}

    def get(self, ctx, split: str, method: str, *, with_originals: bool = False) -> ArraySource:
        key = (method, split)
        if key not in self._made:
            family = method.split("/")[0]
            if family not in self.makers:
                raise ValueError(f"no anonymisation method {family!r} (of {method!r}); known: "
                                 f"{', '.join(self.makers)}")
            self._made[key] = self._shared(ctx, split, method, lambda: self.makers[family](ctx, split, method))
        full = self._made[key]
        if with_originals:
            if "original" not in full.arrays:
                raise ValueError(f"the {method!r} split {split!r} was made without its originals: build the "
                                 f"Context with keep_originals=True")
            return full
        return ArraySource({k: v for k, v in full.arrays.items() if k != "original"})

    def _shared(self, ctx, split: str, method: str, make: Callable[[], ArraySource]) -> ArraySource:
        """The split as another process of this host wrote it, else ``make()``, written for the others."""
        if jax.process_count() > 1:
            return make()
        path = Path(ctx.workdir) / DIRECTORY / method.replace("/", "+") / f"{split}.npz"
        with jobs.file_lock(ctx.workdir, f"{DIRECTORY}/{method}/{split}"):
            if path.exists():
                with np.load(path) as stored:
                    if not self.keep_originals or "original" in stored.files:
                        return ArraySource({name: stored[name] for name in stored.files})
            made = make()
            write_atomically(path, lambda file: np.savez(file, **made.arrays))
            return made

    def forget(self, method: str | None, keep: tuple[str, ...] = ()) -> None:
        """Frees a method's anonymised splits, but those of ``keep``."""
        for key in [k for k in self._made if k[0] == method and k[1] not in keep]:
            del self._made[key]


def map_clips(ctx, source, video_fn: Callable, *, on_host: bool = False) -> ArraySource:
    """``source`` with every clip's video replaced by ``video_fn(uint8 (B, T, H, W, 3))`` -> uint8, in order,
    gathered on every process. ``video_fn`` is jitted over global batches, or (``on_host``) called on this
    process's numpy batches (OpenCV, say). With ``keep_originals`` the raw video stays as ``original``."""
    chain = video_fn if on_host else jax.jit(video_fn)
    parts = []
    for batch in iterate_once(source, ctx.eval_batch_size):  # this process's shard
        if ctx.splits.keep_originals:
            batch["original"] = batch["video"]
        if on_host:
            batch["video"] = np.asarray(chain(batch["video"]), np.uint8)
        batch = global_batch(batch, ctx.mesh)
        if not on_host:
            batch["video"] = chain(batch["video"])
        batch = {k: process_allgather(v, tiled=True) for k, v in batch.items()}  # every process: all clips
        mask = batch.pop(MASK)
        parts.append({k: v[mask] for k, v in batch.items()})
    return ArraySource({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})
