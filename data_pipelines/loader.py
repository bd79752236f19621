"""grain input pipelines: an endless, checkpointable training iterator and one deterministic pass for evaluation.

A ``source`` is any grain random-access source (``__len__`` and
``__getitem__``) whose examples are dicts of numpy arrays: the synthetic set,
or a TFDS array_record source. Each process reads only its own shard, so the
per-process batches of ``make_iterator`` together form the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np

Example = Mapping[str, Any]
Transform = Callable[[Example], Example]

MASK = "mask"


def make_iterator(
    source,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    transform: Transform | None = None,
    worker_count: int = 0,
    drop_remainder: bool = True,
) -> grain.DatasetIterator:
    """Batches of this process's shard, reshuffled every epoch, forever unless ``num_epochs`` is set.

    ``batch_size`` is per process. ``shard_index``/``shard_count`` default to
    ``jax.process_index()``/``jax.process_count()`` (read at call time, after
    ``jax.distributed.initialize``). The returned iterator's position is saved
    and restored by ``grain.checkpoint.CheckpointSave/Restore`` in orbax.
    """
    _check_batch_size(batch_size)
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    dataset = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if transform is not None:
        dataset = dataset.map(transform)
    dataset = dataset.repeat(num_epochs)
    batches = dataset.to_iter_dataset().batch(batch_size, drop_remainder=drop_remainder)
    if worker_count > 0:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(batches)


def iterate_once(
    source,
    batch_size: int,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    transform: Transform | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One unshuffled pass over this process's shard in full batches, with a boolean ``mask`` field.

    The last batch is padded with copies of the split's first example whose
    ``mask`` is False, so every batch has the same shape (one compilation) and
    every process yields the same number of batches (collective eval steps
    cannot hang). Count and average only where ``mask`` is True.
    """
    _check_batch_size(batch_size)
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    if len(source) == 0:
        raise ValueError("iterate_once: the source is empty; there is nothing to evaluate")
    examples = grain.MapDataset.source(source)
    if transform is not None:
        examples = examples.map(transform)
    shard = examples[shard_index::shard_count]
    batches_per_process = math.ceil(math.ceil(len(examples) / shard_count) / batch_size)
    padded = grain.MapDataset.range(batches_per_process * batch_size).map(_MaskedPadding(shard, filler=examples))
    return iter(padded.to_iter_dataset().batch(batch_size))


class _MaskedPadding(grain.transforms.Map):
    """Maps position i to the shard's i-th example (mask True), or past its end to a filler (mask False)."""

    def __init__(self, shard: grain.MapDataset, filler: grain.MapDataset):
        self._shard = shard
        self._filler = filler

    def map(self, index: int) -> dict[str, Any]:
        is_real = index < len(self._shard)
        example = self._shard[index] if is_real else self._filler[0]
        if MASK in example:
            raise ValueError(f"iterate_once: examples already hold a {MASK!r} field, which the loader adds")
        return {**example, MASK: np.bool_(is_real)}


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """This process's shard; slicing [index::count] makes shards disjoint, covering, and within 1 in size."""
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} must lie in [0, shard_count={shard_count})")
    return shard_index, shard_count


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of examples per process, got {batch_size}")
