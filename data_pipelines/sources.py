"""The splits a run reads -- train, val, test, wild (and, synthetic only, openset) -- from the built-in synthetic set
or a prepared TFDS set.

Every split is a grain random-access source of dicts ``{video uint8 (T, H, W, 3), identity, expression,
eval_frame}`` (no ``identity`` on DFEW). ``eval_frame`` is a fixed frame index per clip drawn from the
config seed: every one-frame-per-clip evaluation (PLR, the controllers' accuracies) sees the same frames.

* ``synthetic``: each split rendered once into memory; ``val`` is its own rendered split of the train people.
* ``cremad``: the set ``ppfer-jax prepare cremad`` built (``data.tfds_name``). The paper has train and test
  only; ``val`` is a held-out ``data.val_fraction`` of the train clips (drawn with the seed, removed from
  ``train``), so checkpoint selection and monitoring never read the test split. ``wild`` is DFEW
  (``data.wild_tfds_name``, one frame per clip) for the expression controller, its labels mapped by name onto
  CREMA-D's six; DFEW's seventh class (surprise) has no CREMA-D counterpart and its clips are left out (the
  paper does not say how its 7-class C_fc meets CREMA-D's 6 classes).
* ``dfew``: one official fold (``data.tfds_name``), expression only; ``val`` held out of train as above.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import numpy as np

from data_pipelines import synthetic
from data_pipelines.loader import PreparedSplit

SPLITS = ("train", "val", "test", "wild")
OPEN_SET = "openset"  # people no stage sees: the synthetic set only (``reproduce``'s open-set test)
# its halves: the first half of each person's clips, which attackers of the report's open-set rows train on, and the
# second, which they are scored on
OPEN_SET_FIT, OPEN_SET_SCORE = "openset_fit", "openset_score"
OPEN_SET_SPLITS = (OPEN_SET, OPEN_SET_FIT, OPEN_SET_SCORE)
PREPARED = ("cremad", "dfew")
STAGE_FIELDS = ("video", "identity", "expression")
NAME_ALIASES = {"angry": "anger"}  # DFEW's class names -> CREMA-D's (labels.EXPRESSIONS)


class ArraySource:
    """A grain random-access source over in-memory arrays of one split (field -> array over clips)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["video"])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: value[index] for name, value in self.arrays.items()}


class Selection:
    """Chosen examples of a prepared split, labels mapped onto the run's classes, each with its eval frame.

    Reads lazily (grain workers pickle it as paths and index arrays), so a CREMA-D-size split is never
    held in memory here.
    """

    def __init__(self, source: PreparedSplit, indices: np.ndarray, eval_frame: np.ndarray,
                 expression_map: np.ndarray | None = None):
        self.source, self.indices, self.eval_frame = source, indices, eval_frame
        self.expression_map = expression_map

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = dict(self.source[int(self.indices[index])])
        if self.expression_map is not None:
            example["expression"] = self.expression_map[example["expression"]]
        return {**example, "eval_frame": self.eval_frame[index]}


def load_split(config, split: str):
    """The named split of the configured data set, as the stages and the evaluation read it."""
    if split not in SPLITS + OPEN_SET_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS + OPEN_SET_SPLITS)}, got {split!r}")
    name = config.data.name
    if name == "synthetic":
        spec = synthetic.spec_from_config(config)
        if split in (OPEN_SET_FIT, OPEN_SET_SCORE):
            return open_set_half(_rendered(spec, OPEN_SET), spec.clips_per_identity(OPEN_SET), split)
        return _rendered(spec, split)
    if split in OPEN_SET_SPLITS:
        raise ValueError(f"split {OPEN_SET!r}: only the synthetic set has people no stage sees; config data.name "
                         f"is {name!r}")
    if name not in PREPARED:
        raise ValueError(f"config data.name: expected 'synthetic', 'cremad' or 'dfew', got {name!r}")
    data = config.data
    if split == "wild":
        if name != "cremad":
            raise ValueError("config data.name 'dfew': DFEW has no 'wild' split (it *is* the wild set of cremad)")
        return _prepared(data.data_dir, data.wild_tfds_name, "train", config.seed, "wild", 0.0, data.tfds_name)
    return _prepared(data.data_dir, data.tfds_name, "test" if split == "test" else "train", config.seed, split,
                     data.val_fraction, None)


def open_set_half(source: ArraySource, clips_per_identity: int, split: str) -> ArraySource:
    """The first (``OPEN_SET_FIT``) or second half of each person's clips of the open-set split, where a person's
    clips are consecutive and cycle through the expressions: both halves hold every person."""
    position = np.arange(len(source)) % clips_per_identity
    first = position < clips_per_identity // 2
    keep = first if split == OPEN_SET_FIT else ~first
    return ArraySource({name: value[keep] for name, value in source.arrays.items()})


def eval_frames(seed: int, split: str, num_clips: int, num_frames: int) -> np.ndarray:
    """A fixed frame index per clip, drawn from the seed and the split's name."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), 7]))
    return rng.integers(0, num_frames, size=num_clips).astype(np.int32)


def held_out(num_clips: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted clip indices: ``round(fraction * num_clips)`` drawn with the seed, at least one."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"config data.val_fraction: expected a fraction in (0, 1) of the train clips to hold out "
                         f"for validation, got {fraction!r}")
    count = min(num_clips - 1, max(1, round(fraction * num_clips)))
    order = np.random.default_rng(np.random.SeedSequence([seed, 11])).permutation(num_clips)
    return np.sort(order[count:]), np.sort(order[:count])


@functools.lru_cache(maxsize=16)
def _rendered(spec: synthetic.SyntheticSpec, split: str) -> ArraySource:
    source = synthetic.SyntheticFaces(spec, split)
    items = [source[i] for i in range(len(source))]
    return ArraySource({
        "video": np.stack([item["video"] for item in items]),
        "identity": np.asarray([item["identity"] for item in items], np.int32),
        "expression": np.asarray([item["expression"] for item in items], np.int32),
        "eval_frame": eval_frames(spec.seed, split, len(items), spec.num_frames),
    })


@functools.lru_cache(maxsize=16)
def _prepared(data_dir: str, tfds_name: str, tfds_split: str, seed: int, split: str, val_fraction: float,
              label_names_from: str | None) -> Selection:
    everything = PreparedSplit.open(data_dir, tfds_name, tfds_split)
    source = PreparedSplit(everything.directory, tfds_split, [f for f in STAGE_FIELDS if f in everything.fields])
    indices = np.arange(len(source))
    if split in ("train", "val"):
        kept, val = held_out(len(source), val_fraction, seed)
        indices = val if split == "val" else kept
    mapping = None
    if label_names_from is not None:
        onto = PreparedSplit.open(data_dir, label_names_from, "test").class_names("expression")
        mapping = class_map(source.class_names("expression"), onto)
        labels = PreparedSplit(source.directory, tfds_split, ["expression"])
        indices = indices[mapping[[labels[int(i)]["expression"] for i in indices]] >= 0]
    num_frames = source[0]["video"].shape[0]
    return Selection(source, indices, eval_frames(seed, split, len(indices), num_frames), mapping)


def class_map(names: Sequence[str], onto: Sequence[str]) -> np.ndarray:
    """Index of each class of ``names`` in ``onto`` (by name, with ``NAME_ALIASES``), -1 where it has none."""
    position = {name: i for i, name in enumerate(onto)}
    mapping = np.asarray([position.get(NAME_ALIASES.get(name, name), -1) for name in names], np.int32)
    if not (mapping >= 0).any():
        raise ValueError(f"no expression class of {list(names)} is one of {list(onto)}")
    return mapping
