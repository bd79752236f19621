"""DFEW as a TFDS data set built from the user's own download: the official 5-fold split, 7 expressions.

DFEW (Jiang et al. 2020, https://dfew-dataset.github.io/; licence by application) is downloaded by the
user; nothing is fetched here. Supported layout of ``manual_dir`` (the release's):

    EmoLabel_DataSplit/train(single-labeled)/set_{1..5}.csv    columns video_name,label (label 1..7)
    EmoLabel_DataSplit/test(single-labeled)/set_{1..5}.csv
    Clip/clip_224x224/<video_name>/<frame>.jpg                  a directory of frame images per clip, or
    Clip/clip_224x224/<video_name>.mp4 (or .avi, ...)           a video file per clip

``video_name`` is zero-padded to 5 digits, as the official code does; another clip folder (e.g. the
videos of ``Clip/original``) is chosen with ``clip_dir``. Labels 1..7 are happy, sad, neutral, angry,
surprise, disgust, fear, stored 0..6 in that order. One config per fold; each holds the fold's ``train``
and ``test`` splits of uint8 clips (``data_pipelines.video``: 16 frames with stride n // 16, the last
frame repeated for short clips, where the official code drops them), or with ``one_random_frame`` one
frame drawn at random per clip and fixed by the seed, how the paper pre-trains the expression
controller (on 3,600 DFEW clips; which ones it does not say). DFEW has no identity labels.

    ppfer-jax prepare dfew --manual_dir ~/DFEW --data_dir ~/tensorflow_datasets --fold 1  # -> dfew/fold1-112
"""

from __future__ import annotations

import collections
import csv
import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import video
from data_pipelines.files import write_json_atomically

LABELS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")  # label k in the csvs is LABELS[k-1]
FOLDS = (1, 2, 3, 4, 5)
LABEL_DIR = "EmoLabel_DataSplit"
SPLIT_FILES = {"train": "train(single-labeled)/set_{fold}.csv", "test": "test(single-labeled)/set_{fold}.csv"}
CLIP_DIR = "Clip/clip_224x224"


def clip_name(raw: str) -> str:
    """The clip's folder or file name: numbers zero-padded to 5 digits (``"12"`` -> ``"00012"``)."""
    raw = raw.strip()
    return raw.zfill(5) if raw.isdigit() else raw


def read_labels(path: Path) -> dict[str, int]:
    """``clip name -> label index`` of one split file; the error names the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"DFEW split file {path} not found: expected the release's {LABEL_DIR}/"
                                f"{{train,test}}(single-labeled)/set_{{1..5}}.csv under manual_dir")
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = list(csv.reader(file))
    if not rows or [cell.strip() for cell in rows[0]] != ["video_name", "label"]:
        found = repr(",".join(rows[0])) if rows else "an empty file"
        raise ValueError(f"{path}, line 1: expected the header 'video_name,label', got {found}")
    labels = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip():
            raise ValueError(f"{path}, line {line}: expected 'video_name,label', got {','.join(row)!r}")
        name, label = clip_name(row[0]), row[1].strip()
        if label not in {str(k) for k in range(1, len(LABELS) + 1)}:
            mapping = ", ".join(f"{k} {n}" for k, n in enumerate(LABELS, start=1))
            raise ValueError(f"{path}, line {line}: label {label!r} of clip {name} is not one of 1..7 ({mapping})")
        if name in labels:
            raise ValueError(f"{path}, line {line}: clip {name} is listed twice")
        labels[name] = int(label) - 1
    if not labels:
        raise ValueError(f"{path}: no clips listed")
    return labels


def fold_labels(manual_dir: Path, fold: int) -> dict[str, dict[str, int]]:
    """``split -> clip -> label`` of one official fold, checked to be disjoint."""
    manual_dir = _check_manual_dir(manual_dir)
    if fold not in FOLDS:
        raise ValueError(f"fold: expected one of {FOLDS}, got {fold}")
    splits = {split: read_labels(manual_dir / LABEL_DIR / file.format(fold=fold))
              for split, file in SPLIT_FILES.items()}
    both = sorted(set(splits["train"]) & set(splits["test"]))
    if both:
        raise ValueError(f"DFEW fold {fold}: clips {', '.join(both[:5])} are in both the train and the test file")
    return splits


def find_clip(clip_root: Path, name: str) -> Path:
    """The clip's frame directory or video file; ``video.BadInput`` when neither exists."""
    folder = clip_root / name
    if folder.is_dir():
        return folder
    for suffix in video.VIDEO_SUFFIXES:
        if (clip_root / f"{name}{suffix}").is_file():
            return clip_root / f"{name}{suffix}"
    raise video.BadInput(folder, f"clip listed in the split files but neither a frame directory nor a video "
                                 f"({'/'.join(video.VIDEO_SUFFIXES)}) is there")


def _check_manual_dir(manual_dir) -> Path:
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"manual_dir {manual_dir} is not a directory: download DFEW there first")
    entries = sorted(p.name for p in manual_dir.iterdir())
    if not entries:
        raise ValueError(f"manual_dir {manual_dir} is empty: put DFEW's {LABEL_DIR}/ and Clip/ folders there")
    if LABEL_DIR not in entries:
        found = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(f"manual_dir {manual_dir}: no {LABEL_DIR}/ folder (DFEW's split files); found: {found}")
    return manual_dir


def _check_clip_root(manual_dir: Path, clip_dir: str) -> Path:
    root = Path(manual_dir).expanduser() / clip_dir
    if not root.is_dir():
        raise FileNotFoundError(f"no clip folder {root}: expected DFEW's {CLIP_DIR}/ (frame directories) or "
                                f"name your folder of clips with clip_dir")
    return root


# ----------------------------------------------------------------------------------------------------------------
# TFDS builder


@dataclasses.dataclass
class DfewConfig(tfds.core.BuilderConfig):
    """One official fold in one clip format."""

    clip: video.ClipSpec = video.ClipSpec()
    fold: int = 1


def config_for(fold: int = 1, image_size: int = 112, *, num_frames: int = 16, one_random_frame: bool = False,
               crop: video.CropBox = video.CropBox(), seed: int = 0) -> DfewConfig:
    """Named by its settings: ``fold1-112``, ``fold1-112-frame`` (one random frame), e.g. ``fold2-32-f4``."""
    if fold not in FOLDS:
        raise ValueError(f"fold: expected one of {FOLDS}, got {fold}")
    parts = [f"fold{fold}", str(image_size)]
    parts += ["frame"] if one_random_frame else [f"f{num_frames}"] if num_frames != 16 else []
    parts += [f"crop{crop.tag()}"] if crop != video.CropBox() else []
    parts += [f"seed{seed}"] if seed else []
    clip = video.ClipSpec(num_frames=num_frames, image_size=image_size, crop=crop,
                          one_random_frame=one_random_frame, seed=seed)
    return DfewConfig(name="-".join(parts), description=f"fold {fold}, {clip.shape} uint8 clips", clip=clip,
                      fold=fold)


class Dfew(video.PreparingBuilder, tfds.core.GeneratorBasedBuilder):
    """DFEW in-the-wild video clips, 7 expressions, official 5-fold split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: single-labelled clips of the 5 official folds."}
    BUILDER_CONFIGS = [config_for(fold, size, one_random_frame=frame)
                       for fold in FOLDS for size in (112, 224) for frame in (False, True)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Obtain DFEW (https://dfew-dataset.github.io/) and pass the folder holding "
                                    f"{LABEL_DIR}/ and Clip/ as manual_dir.")

    def __init__(self, *, clip_dir: str = CLIP_DIR, **kwargs):
        self.clip_dir = clip_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=self.builder_config.clip.shape, dtype=np.uint8,
                                              encoding=tfds.features.Encoding.ZLIB),
                "expression": tfds.features.ClassLabel(names=LABELS),
                "name": tfds.features.Text(),
            }),
            homepage="https://dfew-dataset.github.io/",
            citation="Jiang et al., DFEW: A Large-Scale Database for Recognizing Dynamic Facial Expressions in "
                     "the Wild, ACM Multimedia 2020.",
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        manual_dir = Path(dl_manager.manual_dir)
        labels = fold_labels(manual_dir, config.fold)
        clip_root = _check_clip_root(manual_dir, self.clip_dir)
        sources, bad = {}, {}
        for name in (name for split in labels.values() for name in split):
            try:
                sources[name] = find_clip(clip_root, name)
            except video.BadInput as error:
                bad[error.path] = error.reason
        cache = video.clip_cache_dir(dl_manager.download_dir, self.name, config.clip)
        converted = video.convert_all(sources, config.clip, cache, workers=self.workers, progress=self.progress,
                                      description=f"DFEW fold {config.fold} clips")
        bad.update(converted.bad)
        listed = sum(len(split) for split in labels.values())
        video.check_bad_fraction(bad, listed, self.max_bad_fraction, cache / "skipped.txt")
        splits = {split: {name: label for name, label in members.items() if name in converted.clips}
                  for split, members in labels.items()}
        write_json_atomically(Path(self.data_dir) / video.SUMMARY, _summary(config.name, splits, bad, listed))
        return {split: self._generate_examples(members, converted.clips) for split, members in splits.items()}

    def _generate_examples(self, labels: dict[str, int], cached: dict[str, Path]):
        for name, label in labels.items():
            yield name, {"video": np.load(cached[name]), "expression": label, "name": name}


def _summary(config: str, splits: dict[str, dict[str, int]], bad: dict[str, str], listed: int) -> dict:
    return {
        "dataset": "dfew",
        "config": config,
        "splits": {split: len(members) for split, members in splits.items()},
        "per_class": {split: {name: collections.Counter(members.values())[i] for i, name in enumerate(LABELS)}
                      for split, members in splits.items()},
        "listed": listed,
        "skipped": bad,
    }


def prepare(manual_dir: str | Path, data_dir: str | Path, *, fold: int = 1, image_size: int = 112,
            num_frames: int = 16, one_random_frame: bool = False, crop: video.CropBox = video.CropBox(),
            seed: int = 0, clip_dir: str = CLIP_DIR, max_bad_fraction: float = 0.01, workers: int = 1,
            keep_cache: bool = False, progress: bool = True) -> dict:
    """Builds (or finds built) ``<data_dir>/dfew/<config>``; returns the summary (``video.format_summary``).

    Resumable: clips decoded by an interrupted run are reused, a finished data set is not rebuilt. Folds
    share the clip cache: prepare several with ``keep_cache=True`` for all but the last.
    """
    manual_dir = Path(manual_dir).expanduser()
    fold_labels(manual_dir, fold)  # layout errors before TFDS starts
    _check_clip_root(manual_dir, clip_dir)
    data_dir = Path(data_dir).expanduser()
    config = config_for(fold, image_size, num_frames=num_frames, one_random_frame=one_random_frame, crop=crop,
                        seed=seed)
    builder = Dfew(config=video.registered_or_custom(Dfew, config), data_dir=str(data_dir), clip_dir=clip_dir,
                   max_bad_fraction=max_bad_fraction, workers=workers, progress=progress)
    return video.run_builder(builder, manual_dir, data_dir / "downloads", keep_cache=keep_cache)
