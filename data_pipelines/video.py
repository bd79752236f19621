"""Face videos into the paper's fixed-size uint8 clips, and a whole data set of them, robustly.

One clip, as the official code makes it: decode every frame, keep ``num_frames`` of them with stride
``n // num_frames`` from the first (a shorter video repeats its last frame), centre-crop a square face box
and resize it. Videos are decoded with PyAV (FFmpeg), which reads CREMA-D's FLV as well as MP4 and AVI;
a directory of frame images (DFEW's release) is read with Pillow, and only the kept frames are opened.

A data set (``convert_all``): the TFDS builders hand over every source at once. Each finished clip is
cached as ``.npy`` under the TFDS download directory, so an interrupted ``prepare`` resumes where it
stopped; sources are converted in worker processes; a bad file is collected with its reason instead of
stopping the run, and ``check_bad_fraction`` stops it when there are too many.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import multiprocessing
import re
import shutil
import zlib
from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipelines.files import write_atomically, write_text_atomically

VIDEO_SUFFIXES = (".flv", ".mp4", ".avi", ".mkv", ".mov", ".webm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# A video that decodes to fewer than this share of the frames its header announces is truncated.
TRUNCATED_BELOW = 0.75
SUMMARY = "prepare_summary.json"  # written by a builder beside its data: clips per split and class, skipped files
_LFS_POINTER = b"version https://git-lfs"


class BadInput(ValueError):
    """A source that cannot become a clip; the message names the file and says why."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # crosses process boundaries with both fields intact
        return BadInput, (self.path, self.reason)


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A square face box: its centre as fractions of the frame's height and width, its side as a fraction of
    the frame's shorter side. The default, the largest centred square, suits clips filmed or aligned with
    the face in the middle (CREMA-D, DFEW's 224x224 crops); the box is shifted to lie inside the frame."""

    centre_y: float = 0.5
    centre_x: float = 0.5
    size: float = 1.0

    def __post_init__(self):
        for name in ("centre_y", "centre_x"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"crop {name}: expected a fraction in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"crop size: expected a fraction in (0, 1] of the shorter side, got {self.size}")

    @classmethod
    def parse(cls, text: str) -> CropBox:
        """``"centre_y,centre_x,size"``, e.g. ``"0.45,0.5,0.8"``."""
        parts = text.split(",")
        try:
            values = [float(part) for part in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise ValueError(f"crop: expected three fractions 'centre_y,centre_x,size', got {text!r}")
        return cls(*values)

    def pixels(self, height: int, width: int) -> tuple[int, int, int]:
        """(top, left, side) of the box in a height x width frame."""
        side = max(1, round(self.size * min(height, width)))
        top = min(max(round(self.centre_y * height - side / 2), 0), height - side)
        left = min(max(round(self.centre_x * width - side / 2), 0), width - side)
        return top, left, side

    def tag(self) -> str:
        return f"{self.centre_y:g}_{self.centre_x:g}_{self.size:g}"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What a prepared clip is: ``(num_frames, image_size, image_size, 3)`` uint8, or with
    ``one_random_frame`` a single frame drawn from all of the video's frames, at random but fixed by
    ``seed`` and the clip's name (how the paper pre-trains the expression controller on DFEW)."""

    num_frames: int = 16
    image_size: int = 112
    crop: CropBox = CropBox()
    one_random_frame: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.num_frames < 1 or self.image_size < 2:
            raise ValueError(f"clip: expected num_frames >= 1 and image_size >= 2, got {self.num_frames}, "
                             f"{self.image_size}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        frames = 1 if self.one_random_frame else self.num_frames
        return frames, self.image_size, self.image_size, 3

    def frame_indices(self, num_available: int, name: str) -> np.ndarray:
        if self.one_random_frame:
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            return rng.integers(num_available, size=1)
        return sample_indices(num_available, self.num_frames)

    def tag(self) -> str:
        """A name for the cache of clips made to this spec."""
        frames = f"frame-seed{self.seed}" if self.one_random_frame else f"{self.num_frames}f"
        return f"{self.image_size}px-{frames}-crop{self.crop.tag()}"


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """The official code's rule: every (n // T)-th frame from the first, the first T of them; a video of
    n < T frames is padded by repeating its last frame."""
    if num_available < 1:
        raise ValueError(f"sample_indices: a clip needs at least one frame, got {num_available}")
    if num_available <= num_frames:
        return np.minimum(np.arange(num_frames), num_available - 1)
    return np.arange(num_frames) * (num_available // num_frames)


def resize_box(frame: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The (left, top, right, bottom) region of a uint8 (H, W, 3) frame resized to (width, height), bilinear
    (antialiased when shrinking)."""
    image = Image.fromarray(frame)
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box))


def crop_and_resize(frame: np.ndarray, crop: CropBox, image_size: int) -> np.ndarray:
    top, left, side = crop.pixels(*frame.shape[:2])
    return resize_box(frame, (left, top, left + side, top + side), (image_size, image_size))


FACE_MARGIN = 0.4  # a detected face's square crop: its longer side grown by this share (context around the face)


def face_square(box, margin: float = FACE_MARGIN) -> tuple[int, int, int]:
    """(left, top, side) in whole pixels of the square crop around a face box (x0, y0, x1, y1): centred on the box,
    its side the box's longer side grown by ``margin``. It may reach outside the frame (``crop_square`` pads)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    side = max(2, round(max(x1 - x0, y1 - y0) * (1 + margin)))
    return round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2), side


def crop_square(frame: np.ndarray, square: tuple[int, int, int], size: int) -> np.ndarray:
    """The (left, top, side) square of a uint8 frame resized to size x size; where it leaves the frame the frame's
    edge pixels are repeated (so a face at the border keeps its place and scale in the crop)."""
    left, top, side = square
    height, width = frame.shape[:2]
    region = frame[max(top, 0):max(min(top + side, height), 0), max(left, 0):max(min(left + side, width), 0)]
    if region.size == 0:
        raise ValueError(f"crop_square: the square {square} lies outside the {width}x{height} frame")
    pads = ((max(0, -top), max(0, top + side - height)), (max(0, -left), max(0, left + side - width)), (0, 0))
    if any(sum(p) for p in pads):
        region = np.pad(region, pads, mode="edge")
    return resize_box(np.ascontiguousarray(region), (0, 0, side, side), (size, size))


# ----------------------------------------------------------------------------------------------------------------
# One clip


def load_clip(path: Path, spec: ClipSpec, name: str) -> np.ndarray:
    """The clip of a video file or of a directory of frame images; ``BadInput`` names what is wrong."""
    path = Path(path)
    if path.is_dir():
        return _images_clip(path, spec, name)
    return _video_clip(path, spec, name)


@dataclasses.dataclass(frozen=True)
class VideoStream:
    """An opened video: its frame rate (None: the stream has none), the frame count its header announces (0:
    unknown) and a one-pass iterator of its PyAV frames, decoded lazily (converted to RGB by the reader, which
    may keep only some)."""

    path: Path
    rate: Fraction | None
    announced: int
    frames: Iterator


@contextlib.contextmanager
def open_video(path: Path) -> Iterator[VideoStream]:
    """The one decoder of ``prepare`` and ``anonymize``: the first video stream of a file, opened with PyAV;
    ``BadInput`` naming the file when it is empty, a Git LFS pointer, unreadable, without a video stream, or,
    once read to the end, without a frame or truncated."""
    import av  # only the processes that decode need FFmpeg

    path = Path(path)
    check_file(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise BadInput(path, f"unreadable video ({getattr(error, 'strerror', None) or error})") from None
    with container:
        if not container.streams.video:
            raise BadInput(path, "no video stream in the file")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        announced = announced_frames(container, stream)
        yield VideoStream(path, Fraction(rate) if rate else None, announced,
                          _decoded(path, container, stream, announced))


def _decoded(path: Path, container, stream, announced: int) -> Iterator:
    import av

    count = 0
    try:
        for frame in container.decode(stream):
            count += 1
            yield frame
    except (av.error.FFmpegError, OSError) as error:
        raise BadInput(path, f"unreadable video{f' after {count} frames' if count else ''} "
                             f"({getattr(error, 'strerror', None) or error})") from None
    if not count:
        raise BadInput(path, "no frame could be decoded")
    if announced and count < TRUNCATED_BELOW * announced:
        raise BadInput(path, f"truncated: decoded {count} of the {announced} frames its header announces")


def decode_video(path: Path) -> list:
    """Every frame of the first video stream, as PyAV frames (converted to RGB only when kept)."""
    with open_video(path) as video:
        return list(video.frames)


def _video_clip(path: Path, spec: ClipSpec, name: str) -> np.ndarray:
    from av.video.reformatter import VideoReformatter

    frames = decode_video(path)
    to_rgb = VideoReformatter()  # one converter for the video: a frame's own rebuilds its tables, 6x slower
    return np.stack([crop_and_resize(to_rgb.reformat(frames[i], format="rgb24").to_ndarray(), spec.crop,
                                     spec.image_size) for i in spec.frame_indices(len(frames), name)])


def _images_clip(directory: Path, spec: ClipSpec, name: str) -> np.ndarray:
    images = sorted((p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_order)
    if not images:
        raise BadInput(directory, f"no frame images ({', '.join(IMAGE_SUFFIXES)}) in the clip's directory")
    return np.stack([crop_and_resize(read_image(images[i]), spec.crop, spec.image_size)
                     for i in spec.frame_indices(len(images), name)])


def natural_order(path: Path) -> list:
    """Frame 2 before frame 10 whether or not the numbers in the names are zero-padded."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]


def read_image(path: Path) -> np.ndarray:
    check_file(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as error:  # UnidentifiedImageError and truncated files
        raise BadInput(path, f"unreadable image ({error})") from None


def check_file(path: Path) -> None:
    try:
        with open(path, "rb") as file:
            head = file.read(len(_LFS_POINTER))
    except OSError as error:
        raise BadInput(path, f"cannot open ({error.strerror or error})") from None
    if not head:
        raise BadInput(path, "empty file (0 bytes)")
    if head == _LFS_POINTER:
        raise BadInput(path, "a Git LFS pointer, not the media itself: fetch the real files with `git lfs pull`")


def announced_frames(container, stream) -> int:
    """Frames the header promises: the stream's count, else duration x frame rate (FLV has no count)."""
    if stream.frames:
        return int(stream.frames)
    if container.duration and stream.average_rate:
        return round(container.duration / 1_000_000 * float(stream.average_rate))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# A data set


@dataclasses.dataclass(frozen=True)
class Conversion:
    """The outcome of ``convert_all``: cached clips by name, and bad files with the reason, in source order."""

    clips: dict[str, Path]
    bad: dict[str, str]


def convert_all(sources: Mapping[str, Path], spec: ClipSpec, cache_dir: Path, *, workers: int = 1,
                progress: bool = True, description: str = "decoding") -> Conversion:
    """Turns every ``name -> source`` into a cached clip, reusing clips cached by an earlier, interrupted run."""
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = {name: cache_dir / f"{name}.npy" for name in sources}
    todo = [(name, Path(path), spec, target[name]) for name, path in sources.items() if not target[name].exists()]
    failures = {}
    with tqdm(total=len(sources), initial=len(sources) - len(todo), desc=description, unit="clip",
              disable=not progress, dynamic_ncols=True) as bar:
        for name, failure in _map(_convert_one, todo, workers):
            if failure is not None:
                failures[name] = failure
            bar.update()
    bad = {failures[name][0]: failures[name][1] for name in sources if name in failures}
    return Conversion({name: target[name] for name in sources if name not in failures}, bad)


def _convert_one(job) -> tuple[str, tuple[str, str] | None]:
    name, path, spec, target = job
    try:
        clip = load_clip(path, spec, name)
    except BadInput as error:
        return name, (error.path, error.reason)
    buffer = io.BytesIO()
    np.save(buffer, clip)
    write_atomically(target, lambda file: file.write(buffer.getvalue()))
    return name, None


def _map(function, jobs: list, workers: int) -> Iterable:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    # spawn: the parent may run JAX's threads, which a fork would copy mid-flight
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(function, jobs, chunksize=4)


def check_bad_fraction(bad: Mapping[str, str], total: int, max_bad_fraction: float, listing: Path) -> None:
    """Stops the preparation when more than ``max_bad_fraction`` of ``total`` sources are bad, naming them."""
    if len(bad) <= max_bad_fraction * total:
        return
    write_text_atomically(listing, "".join(f"{path}: {reason}\n" for path, reason in bad.items()))
    first = "; ".join(f"{path}: {reason}" for path, reason in list(bad.items())[:3])
    raise ValueError(f"{len(bad)} of {total} files ({len(bad) / total:.1%}) could not be used, more than "
                     f"max_bad_fraction={max_bad_fraction:g}. First: {first}. Full list: {listing}")


def clip_cache_dir(download_dir: str | Path, dataset: str, spec: ClipSpec) -> Path:
    """Where ``convert_all`` keeps a data set's clips between runs; shared by every config with the same spec."""
    return Path(download_dir).expanduser() / "ppfer_clips" / f"{dataset}-{spec.tag()}"


def registered_or_custom(builder_class, config):
    """What to pass as ``config=``: a registered config's name when ``config`` is one of ``BUILDER_CONFIGS``
    (TFDS refuses a new object named like a registered config), otherwise the custom config itself."""
    registered = {c.name: c for c in builder_class.BUILDER_CONFIGS}.get(config.name)
    if registered is None:
        return config
    if registered != config:  # a config_for bug: its name no longer says all its options
        raise ValueError(f"{builder_class.__name__} config {config.name!r}: the requested options {config} differ "
                         f"from the registered config of that name {registered}")
    return config.name


def run_builder(builder, manual_dir: Path, download_dir: Path, *, keep_cache: bool) -> dict:
    """Prepares a builder of this package (resuming, or a no-op when done) and returns its summary.

    The builder writes ``SUMMARY`` beside its data; the clip cache goes once the data set is complete.
    """
    import tensorflow_datasets as tfds

    already = (Path(builder.data_dir) / "dataset_info.json").exists()
    builder.download_and_prepare(download_dir=str(download_dir),
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    if not keep_cache:
        shutil.rmtree(clip_cache_dir(download_dir, builder.name, builder.builder_config.clip), ignore_errors=True)
    data_dir = Path(builder.data_dir)
    summary = json.loads((data_dir / SUMMARY).read_text())
    summary["files"] = {name: str(data_dir / file) for name, file in summary.get("files", {}).items()}
    return {**summary, "data_dir": str(data_dir), "already_prepared": already}


def format_summary(summary: Mapping) -> str:
    """The human-readable end of ``ppfer-jax prepare``: clips per split and class (and actor), skipped files."""
    state = "already prepared" if summary.get("already_prepared") else "prepared"
    lines = [f"{summary['dataset']} ({summary['config']}): {state} at {summary['data_dir']}"]
    for split, count in summary["splits"].items():
        classes = ", ".join(f"{name} {n}" for name, n in summary["per_class"][split].items())
        lines.append(f"  {split}: {count} clips ({classes})")
        if "per_actor" in summary:
            per_actor = summary["per_actor"][split]
            lines.append(f"    {len(per_actor)} actors, {min(per_actor.values())}-{max(per_actor.values())} "
                         f"clips each")
    for name, path in summary.get("files", {}).items():
        lines.append(f"  {name}: {path}")
    skipped = summary["skipped"]
    lines.append(f"  skipped {len(skipped)} of {summary['listed']} listed files" + (":" if skipped else ""))
    lines.extend(f"    {path}: {reason}" for path, reason in skipped.items())
    return "\n".join(lines)


class PreparingBuilder:
    """Options shared by the prepared-data builders (mixed in before ``tfds.core.GeneratorBasedBuilder``):
    the bad-file budget, decode workers, the progress bar, and array_record storage (random access for
    grain, no TensorFlow needed)."""

    def __init__(self, *, max_bad_fraction: float = 0.01, workers: int = 1, progress: bool = True, **kwargs):
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction: expected a fraction in [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.workers = workers
        self.progress = progress
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
