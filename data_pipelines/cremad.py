"""CREMA-D video as a TFDS data set built from the user's own download, with the paper's closed-set split.

CREMA-D (Cao et al. 2014; https://github.com/CheyneyComputerScience/CREMA-D, Open Database License) is
downloaded by the user; nothing is fetched here. The builder reads ``<manual_dir>/VideoFlash/*.flv`` (or
the ``.flv`` files directly in ``manual_dir``), named ``ActorID_Sentence_Emotion_Level``, e.g.
``1001_DFA_ANG_XX.flv``: 91 actors 1001-1091, 12 sentences, emotions ANG DIS FEA HAP NEU SAD, levels LO MD
HI XX. Each example holds a uint8 clip (``data_pipelines.video``), ``identity`` = actor - 1001 (0-90),
``expression`` (0-5, in ``labels.EXPRESSIONS`` order), and ``actor``, ``sentence``, ``level``, ``name``.

Splits: the paper tests on 2,232 of the 7,442 clips and trains on the rest, every actor in both (closed
set); it does not publish which. ``closed_set_split`` draws them stratified by actor, then by emotion
within an actor, with a fixed seed, and the builder writes the names to ``cremad_test_clips.txt`` beside
the data so others can reuse the split. Stored as array_record, readable without TensorFlow.

    ppfer-jax prepare cremad --manual_dir ~/CREMA-D --data_dir ~/tensorflow_datasets  # -> cremad/112
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import video
from data_pipelines.files import write_json_atomically, write_text_atomically
from data_pipelines.labels import EXPRESSIONS

EMOTION_CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")  # index i is EXPRESSIONS[i]
LEVELS = ("LO", "MD", "HI", "XX")  # low, medium, high, unspecified intensity
FIRST_ACTOR, NUM_ACTORS = 1001, 91
PAPER_TEST_CLIPS = 2232
TEST_LIST = "cremad_test_clips.txt"
VIDEO_DIR = "VideoFlash"
_NAME = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")


@dataclasses.dataclass(frozen=True)
class ClipName:
    """The labels a CREMA-D file name carries."""

    stem: str
    actor: int
    sentence: str
    expression: int
    level: str

    @property
    def identity(self) -> int:
        return self.actor - FIRST_ACTOR


def parse_name(path: str | Path) -> ClipName:
    """Labels from ``ActorID_Sentence_Emotion_Level.ext``; ``video.BadInput`` says which part is wrong."""
    stem = Path(path).stem
    match = _NAME.fullmatch(stem)
    if match is None:
        raise video.BadInput(path, "name is not ActorID_Sentence_Emotion_Level (e.g. 1001_DFA_ANG_XX)")
    actor, sentence, emotion, level = match.groups()
    if not FIRST_ACTOR <= int(actor) < FIRST_ACTOR + NUM_ACTORS:
        raise video.BadInput(path, f"actor {actor} outside CREMA-D's {FIRST_ACTOR}-{FIRST_ACTOR + NUM_ACTORS - 1}")
    if emotion not in EMOTION_CODES:
        raise video.BadInput(path, f"unknown emotion code {emotion!r}, expected one of {' '.join(EMOTION_CODES)}")
    if level not in LEVELS:
        raise video.BadInput(path, f"unknown intensity level {level!r}, expected one of {' '.join(LEVELS)}")
    return ClipName(stem, int(actor), sentence, EMOTION_CODES.index(emotion), level)


def find_videos(manual_dir: str | Path) -> list[Path]:
    """The release's video files, sorted; a clear error when ``manual_dir`` does not look like CREMA-D."""
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"manual_dir {manual_dir} is not a directory: download CREMA-D there first "
                                f"(its {VIDEO_DIR} folder of *.flv clips)")
    entries = sorted(manual_dir.iterdir())
    if not entries:
        raise ValueError(f"manual_dir {manual_dir} is empty: put CREMA-D's {VIDEO_DIR} folder (the *.flv "
                         f"clips) there")
    for folder in (manual_dir / VIDEO_DIR, manual_dir):
        videos = sorted(p for p in folder.glob("*") if p.suffix.lower() in video.VIDEO_SUFFIXES and p.is_file())
        if videos:
            return videos
    found = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise ValueError(f"manual_dir {manual_dir}: no CREMA-D videos; expected {manual_dir / VIDEO_DIR}/*.flv "
                     f"(the release layout) or *.flv directly in it, found: {found}")


def closed_set_split(clips: Sequence[ClipName], test_clips: int, seed: int) -> set[str]:
    """Stems of ``test_clips`` test clips, stratified by actor and, within an actor, by emotion.

    Largest-remainder shares (ties drawn at random) give each actor, then each of its emotions, a test
    count proportional to its clips, so the counts add up exactly; the clips in a cell are drawn at random.
    Deterministic in ``seed`` and the set of clips, whatever their order.
    """
    rng = np.random.default_rng(seed)
    by_actor = collections.defaultdict(list)
    for clip in sorted(clips, key=lambda c: c.stem):
        by_actor[clip.actor].append(clip)
    actors = sorted(by_actor)
    if not 0 < test_clips < len(clips):
        raise ValueError(f"test_clips: expected between 1 and {len(clips) - 1} of the {len(clips)} clips, "
                         f"got {test_clips}")
    per_actor = _apportion(test_clips, [len(by_actor[a]) for a in actors], rng)
    for actor, count in zip(actors, per_actor):
        if not 0 < count < len(by_actor[actor]):
            raise ValueError(f"test_clips={test_clips} leaves actor {actor} ({len(by_actor[actor])} clips) with "
                             f"{count} test clips: every actor must be in both splits; choose another test_clips")
    test = set()
    for actor, count in zip(actors, per_actor):
        cells = collections.defaultdict(list)
        for clip in by_actor[actor]:
            cells[clip.expression].append(clip.stem)
        emotions = sorted(cells)
        for emotion, share in zip(emotions, _apportion(count, [len(cells[e]) for e in emotions], rng)):
            test.update(rng.choice(cells[emotion], size=share, replace=False).tolist())
    return test


def _apportion(total: int, sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``sizes`` (largest remainder, exact ties drawn by ``rng``)."""
    sizes = np.asarray(sizes, np.int64)
    shares, remainders = np.divmod(total * sizes, sizes.sum())
    order = np.lexsort((rng.random(len(sizes)), -remainders))  # largest remainder first
    shares[order[:total - shares.sum()]] += 1
    return shares


# ----------------------------------------------------------------------------------------------------------------
# TFDS builder


@dataclasses.dataclass
class CremadConfig(tfds.core.BuilderConfig):
    """A prepared variant: the clip format, and the test split's size and seed."""

    clip: video.ClipSpec = video.ClipSpec()
    test_clips: int = PAPER_TEST_CLIPS
    split_seed: int = 0


def config_for(image_size: int = 112, *, num_frames: int = 16, crop: video.CropBox = video.CropBox(),
               test_clips: int = PAPER_TEST_CLIPS, split_seed: int = 0) -> CremadConfig:
    """The config of these settings, named by them: ``112`` for the paper's, e.g. ``32-f4-test12`` otherwise."""
    parts = [str(image_size)]
    parts += [f"f{num_frames}"] if num_frames != 16 else []
    parts += [f"crop{crop.tag()}"] if crop != video.CropBox() else []
    parts += [f"test{test_clips}"] if test_clips != PAPER_TEST_CLIPS else []
    parts += [f"seed{split_seed}"] if split_seed else []
    clip = video.ClipSpec(num_frames=num_frames, image_size=image_size, crop=crop)
    return CremadConfig(name="-".join(parts), description=f"{clip.shape} uint8 clips, {test_clips} test clips",
                        clip=clip, test_clips=test_clips, split_seed=split_seed)


class Cremad(video.PreparingBuilder, tfds.core.GeneratorBasedBuilder):
    """CREMA-D video clips for closed-set facial expression recognition with identity labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 16-frame clips, stratified closed-set split."}
    BUILDER_CONFIGS = [config_for(112), config_for(224)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Download CREMA-D (https://github.com/CheyneyComputerScience/CREMA-D, with "
                                    f"`git lfs pull`) and pass the folder holding {VIDEO_DIR}/ as manual_dir.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=self.builder_config.clip.shape, dtype=np.uint8,
                                              encoding=tfds.features.Encoding.ZLIB),
                "identity": tfds.features.ClassLabel(names=[str(FIRST_ACTOR + i) for i in range(NUM_ACTORS)]),
                "expression": tfds.features.ClassLabel(names=EXPRESSIONS),
                "actor": np.int32,
                "sentence": tfds.features.Text(),
                "level": tfds.features.Text(),
                "name": tfds.features.Text(),
            }),
            homepage="https://github.com/CheyneyComputerScience/CREMA-D",
            citation="Cao et al., CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset, "
                     "IEEE Trans. Affective Computing 5(4), 2014.",
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        files = find_videos(dl_manager.manual_dir)
        names, bad = {}, {}
        for path in files:
            try:
                clip = parse_name(path)
            except video.BadInput as error:
                bad[error.path] = error.reason
                continue
            if clip.stem in names:
                bad[str(path)] = f"duplicate of {names[clip.stem][0]}"
                continue
            names[clip.stem] = (path, clip)
        cache = video.clip_cache_dir(dl_manager.download_dir, self.name, config.clip)
        converted = video.convert_all({stem: path for stem, (path, _) in names.items()}, config.clip, cache,
                                      workers=self.workers, progress=self.progress, description="CREMA-D clips")
        bad.update(converted.bad)
        video.check_bad_fraction(bad, len(files), self.max_bad_fraction, cache / "skipped.txt")
        clips = [clip for stem, (_, clip) in names.items() if stem in converted.clips]
        test = closed_set_split(clips, config.test_clips, config.split_seed)
        splits = {"train": [c for c in clips if c.stem not in test], "test": [c for c in clips if c.stem in test]}
        write_text_atomically(Path(self.data_dir) / TEST_LIST, "".join(f"{stem}\n" for stem in sorted(test)))
        write_json_atomically(Path(self.data_dir) / video.SUMMARY, _summary(config.name, splits, bad, len(files)))
        return {split: self._generate_examples(members, converted.clips) for split, members in splits.items()}

    def _generate_examples(self, clips: list[ClipName], cached: dict[str, Path]):
        for clip in clips:
            yield clip.stem, {
                "video": np.load(cached[clip.stem]),
                "identity": clip.identity,
                "expression": clip.expression,
                "actor": clip.actor,
                "sentence": clip.sentence,
                "level": clip.level,
                "name": clip.stem,
            }


def _summary(config: str, splits: dict[str, list[ClipName]], bad: dict[str, str], listed: int) -> dict:
    return {
        "dataset": "cremad",
        "config": config,
        "splits": {split: len(clips) for split, clips in splits.items()},
        "per_class": {split: {name: sum(c.expression == i for c in clips) for i, name in enumerate(EXPRESSIONS)}
                      for split, clips in splits.items()},
        "per_actor": {split: {str(a): n for a, n in sorted(collections.Counter(c.actor for c in clips).items())}
                      for split, clips in splits.items()},
        "listed": listed,
        "skipped": bad,
        "files": {"test clip names": TEST_LIST},
    }


def prepare(manual_dir: str | Path, data_dir: str | Path, *, image_size: int = 112, num_frames: int = 16,
            crop: video.CropBox = video.CropBox(), test_clips: int = PAPER_TEST_CLIPS, split_seed: int = 0,
            max_bad_fraction: float = 0.01, workers: int = 1, keep_cache: bool = False,
            progress: bool = True) -> dict:
    """Builds (or finds built) ``<data_dir>/cremad/<config>``; returns the summary (``video.format_summary``).

    Resumable: clips decoded by an interrupted run are reused, a finished data set is not rebuilt.
    """
    find_videos(manual_dir)  # layout errors before TFDS starts
    data_dir = Path(data_dir).expanduser()
    config = config_for(image_size, num_frames=num_frames, crop=crop, test_clips=test_clips, split_seed=split_seed)
    builder = Cremad(config=video.registered_or_custom(Cremad, config), data_dir=str(data_dir),
                     max_bad_fraction=max_bad_fraction, workers=workers, progress=progress)
    return video.run_builder(builder, Path(manual_dir).expanduser(), data_dir / "downloads", keep_cache=keep_cache)
