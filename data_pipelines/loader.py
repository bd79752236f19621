"""grain input pipelines: an endless, checkpointable training iterator and one deterministic pass for evaluation.

A ``source`` is any grain random-access source (``__len__`` and
``__getitem__``) whose examples are dicts of numpy arrays: the synthetic set,
or a TFDS array_record source. Each process reads only its own shard, so the
per-process batches of ``make_iterator`` together form the global batch.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
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
    and restored by ``grain.checkpoint.CheckpointSave/Restore`` in orbax. A ``grain.transforms.RandomMap``
    transform draws from a generator seeded by ``seed`` and the example's position, so it differs by epoch
    and is the same after a restore.
    """
    _check_batch_size(batch_size)
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    dataset = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if isinstance(transform, grain.transforms.RandomMap):  # e.g. RandomResizedCrop: fresh draws every epoch
        dataset = dataset.random_map(transform, seed=_augment_seed(seed))
    elif transform is not None:
        dataset = dataset.map(transform)
    dataset = dataset.repeat(num_epochs)
    batches = dataset.to_iter_dataset(_read_options(batch_size)).batch(batch_size, drop_remainder=drop_remainder)
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
    return iter(padded.to_iter_dataset(_read_options(batch_size)).batch(batch_size))


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


def _read_options(batch_size: int) -> grain.ReadOptions:
    """Two batches read ahead by half the cores. grain's default (16 threads, 500 examples ahead) re-scans its
    whole buffer of pending reads for every example it hands out: on this project's in-memory sources that
    polling took about a tenth of a 2-core training stage (benchmarks/RESULTS.md)."""
    return grain.ReadOptions(num_threads=max(1, min(16, (os.cpu_count() or 2) // 2)),
                             prefetch_buffer_size=2 * batch_size)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of examples per process, got {batch_size}")


def _augment_seed(seed: int) -> int:
    """The augmentation's seed, apart from the shuffle's; grain takes seeds in [0, 2**32)."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------------------
# Prepared TFDS data sets (``ppfer-jax prepare``) and their train-time augmentation


class RandomResizedCrop(grain.transforms.RandomMap):
    """The paper's train-time augmentation, torchvision's ``RandomResizedCrop(size, scale=(0.8, 1.0))`` on a
    whole clip: one box covering ``scale`` of the frame area with aspect ratio in ``ratio``, the same box for
    every frame (motion is kept), resized back to the frame size. On uint8 in the loader's workers, so the
    accelerator never waits for it; pass it as ``make_iterator(..., transform=RandomResizedCrop())``."""

    def __init__(self, scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 key: str = "video", attempts: int = 10):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"RandomResizedCrop scale: expected 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop ratio: expected 0 < low <= high, got {ratio}")
        self.scale, self.ratio, self.key, self.attempts = scale, ratio, key, attempts

    def box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, box height, box width), torchvision's rule: rejection-sample area and log-uniform aspect,
        falling back to the largest centred box of an allowed aspect."""
        for _ in range(self.attempts):
            area = height * width * rng.uniform(*self.scale)
            aspect = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
            box_width, box_height = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
            if 0 < box_width <= width and 0 < box_height <= height:
                return (int(rng.integers(height - box_height + 1)), int(rng.integers(width - box_width + 1)),
                        box_height, box_width)
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        box_height, box_width = (height, round(height * aspect)) if width / height > aspect else \
            (round(width / aspect), width)
        return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width

    def random_map(self, element: Example, rng: np.random.Generator) -> dict[str, Any]:
        from data_pipelines.video import resize_box

        clip = element[self.key]
        height, width = clip.shape[-3:-1]
        top, left, box_height, box_width = self.box(rng, height, width)
        region = (left, top, left + box_width, top + box_height)
        return {**element, self.key: np.stack([resize_box(frame, region, (width, height)) for frame in clip])}


class PreparedSplit:
    """A grain source over one split of a data set built by ``ppfer-jax prepare``, read without TensorFlow.

    Examples hold ``fields`` (default: every non-text feature, e.g. video, identity, expression), integers as
    int32. Pickles as its path and opens the files lazily, so grain worker processes can use it.
    """

    def __init__(self, directory: str | Path, split: str, fields: Sequence[str] | None = None):
        self.directory, self.split = str(directory), split
        self._fields = None if fields is None else tuple(fields)
        _ = self.fields  # opens the files: a wrong path or field fails here, named, not later in a worker

    @classmethod
    def open(cls, data_dir: str | Path, name: str, split: str, fields: Sequence[str] | None = None) -> PreparedSplit:
        """``name`` as TFDS writes it, ``dataset/config`` (e.g. ``cremad/112``); the newest version is used."""
        root = Path(data_dir).expanduser() / name
        versions = sorted((p for p in root.glob("*") if (p / "dataset_info.json").exists()),
                          key=lambda p: tuple(int(part) for part in p.name.split(".") if part.isdigit()))
        if not versions:
            dataset = name.split("/")[0]
            raise FileNotFoundError(f"no prepared data set {name!r} under {Path(data_dir).expanduser()}: run "
                                    f"`ppfer-jax prepare {dataset} --manual_dir PATH --data_dir {data_dir}` first")
        return cls(versions[-1], split, fields)

    @functools.cached_property
    def _source(self):
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(self.directory)
        if self.split not in builder.info.splits:
            raise ValueError(f"{self.directory}: no split {self.split!r}; it has {', '.join(builder.info.splits)}")
        return builder.as_data_source(split=self.split)

    @functools.cached_property
    def fields(self) -> tuple[str, ...]:
        import tensorflow_datasets as tfds

        features = self._source.dataset_info.features
        if self._fields is None:
            return tuple(k for k, f in features.items() if not isinstance(f, tfds.features.Text))
        unknown = [k for k in self._fields if k not in features]
        if unknown:
            raise ValueError(f"{self.directory}: no field {', '.join(unknown)}; it has {', '.join(features)}")
        return self._fields

    def class_names(self, field: str) -> tuple[str, ...]:
        """The names of a ClassLabel field's classes, in label order."""
        return tuple(self._source.dataset_info.features[field].names)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._select(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self._select(example) for example in self._source.__getitems__(indices)]

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "split": self.split, "_fields": self._fields}

    def __repr__(self) -> str:
        return f"PreparedSplit({self.directory!r}, {self.split!r})"

    def _select(self, example: Mapping[str, Any]) -> dict[str, Any]:
        return {k: np.int32(example[k]) if isinstance(example[k], (int, np.integer)) else example[k]
                for k in self.fields}
