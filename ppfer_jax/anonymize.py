"""Anonymising videos with an exported bundle (``ppfer-jax anonymize``).

A video (any file PyAV/FFmpeg reads: mp4, avi, flv, mov, mkv, webm) or a directory
of frame images becomes an H.264 mp4 at the input's frame rate and frame count. Two ways:

**Faces in the full frame** (the default, as face anonymisers do): a first pass finds every face in every frame
(MTCNN, ``face_detection``) and links them into tracks with smoothed boxes (``face_tracks``); a second pass crops
each face as the bundle's training clips were (a square around the face grown by the margin, resized to
``image_size``), anonymises the crops in the same fixed-shape jitted batches, and blends each back into the
full-resolution frame with a feathered edge that reaches full strength on the face box. Pixels outside the crops
are the input's. Fail-safe: a face lost for more than ``carry`` frames, or a frame with no face at all, gives the
whole frame pixelated, and each video's count of such frames is reported. Output at the input's size (a 4:2:0
video needs even sides: an odd last row or column is dropped, with a warning).

**The centred square** (``centre_square=True``, ``--centre-square``), for bundles trained on pre-cropped faces:

* every frame is reduced to the bundle's size as the training clips were: the largest
  centred square is kept (a non-square frame loses its sides, and a warning says so)
  and resized to ``image_size`` x ``image_size``;
* frames are processed in clips of the bundle's ``num_frames`` (T) frames, a fixed batch
  of clips per jitted call so that it compiles once; the last clip is padded by repeating
  the last frame and the padding is dropped. The chain works frame by frame, so each
  output frame is the chain applied to its input frame; the clips matter only for F_u's
  per-clip expression predictions (``--predictions``, a JSON beside the mp4);
* frames are decoded, anonymised and encoded as a stream: memory holds one batch, not the
  video.

Either way only the written frames reach the encoder: no audio (a voice identifies a person) and nothing of the
input's container (metadata included) is copied;
* the mp4 is written to a temp file beside the output and renamed when complete; any
  failure deletes it, so an output either is whole or does not exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from data_pipelines import video
from data_pipelines.files import give_default_mode, write_json_atomically
from data_pipelines.video import BadInput
from ppfer_jax import face_tracks

DEFAULT_FPS = Fraction(25)  # a directory of frames has no frame rate of its own
BATCH_CLIPS = 8  # clips of T frames per jitted call
CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"  # what every player reads; needs even width and height; halves the colour resolution
FULL_COLOUR = "yuv444p"  # keeps every pixel's colour (the anonymiser's output is rich in it); few players read it
CRF = "18"  # x264's "visually lossless" quality: the anonymised detail survives the encode
DETECT_BATCH = 4  # frames per detector call (one PNet pyramid call for all of them)
PIXELATE_BLOCKS = 12  # a fallback frame: this many blocks along its shorter side (a face spans a few at most)


@dataclasses.dataclass(frozen=True)
class Source:
    """An opened input: its frame rate, the frame count its header announces (None: unknown) and a
    one-pass iterator of its RGB uint8 frames (H, W, 3), decoded lazily."""

    path: Path
    fps: Fraction
    frame_count: int | None
    frames: Iterator[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Result:
    """One anonymised input: where it went, how many frames at what rate and size, how long it took."""

    source: Path
    output: Path
    predictions: Path | None
    frames: int
    fps: Fraction
    size: int
    seconds: float
    expression: str | None = None  # F_u's whole-video prediction (mean of its clips' probabilities)
    width: int | None = None  # the full-frame output's size (None: the square ``size``)
    height: int | None = None
    faces: int | None = None  # tracks found (None: the centred square, no detection)
    fallback_frames: tuple[int, ...] = ()  # frames written pixelated whole (a face lost, or none found)
    carried_frames: int = 0  # frames where a lost face's last box was anonymised


# ----------------------------------------------------------------------------------------------------------------
# Reading


@contextlib.contextmanager
def open_source(path: Path, fps: Fraction = DEFAULT_FPS) -> Iterator[Source]:
    """A video file or a directory of frame images; ``BadInput`` (naming the file) when it cannot be one."""
    path = Path(path)
    if path.is_dir():
        yield _images(path, fps)
    elif not path.exists():
        raise BadInput(path, "no such file or directory")
    elif path.suffix.lower() not in video.VIDEO_SUFFIXES:
        raise BadInput(path, f"unknown extension {path.suffix or '(none)'!r}: expected a video "
                             f"({', '.join(video.VIDEO_SUFFIXES)}) or a directory of frame images")
    else:
        with _video(path) as source:
            yield source


@contextlib.contextmanager
def _video(path: Path) -> Iterator[Source]:
    from av.video.reformatter import VideoReformatter

    with video.open_video(path) as stream:
        if stream.rate is None:
            raise BadInput(path, "the video stream has no frame rate")
        to_rgb = VideoReformatter()  # one converter for the video: a frame's own rebuilds its tables
        yield Source(path, stream.rate, stream.announced or None,
                     (to_rgb.reformat(frame, format="rgb24").to_ndarray() for frame in stream.frames))


def _images(directory: Path, fps: Fraction) -> Source:
    images = sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in video.IMAGE_SUFFIXES),
                    key=video.natural_order)
    if not images:
        raise BadInput(directory, f"no frame images ({', '.join(video.IMAGE_SUFFIXES)}) in the directory")
    return Source(directory, Fraction(fps), len(images), (video.read_image(p) for p in images))


# ----------------------------------------------------------------------------------------------------------------
# Frames and clips


def to_bundle_size(frame: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square of a frame, resized to size x size (as the training clips were made)."""
    if frame.shape[:2] == (size, size):
        return frame
    return video.crop_and_resize(frame, video.CropBox(), size)


def resize_note(height: int, width: int, size: int) -> str | None:
    """What ``to_bundle_size`` does to a height x width input, in words; None when it does nothing."""
    if (height, width) == (size, size):
        return None
    side = min(height, width)
    if height != width:
        return (f"{width}x{height} px is not square: only its centred {side}x{side} square is anonymised (the "
                f"rest is not written), resized to the bundle's {size}x{size} px")
    return f"{width}x{height} px resized to the bundle's {size}x{size} px"


def output_side(height: int, width: int, size: int, keep_size: bool) -> int:
    """The output's square side: the bundle's size, or with ``keep_size`` the input's centred square (even, for
    4:2:0 video)."""
    if not keep_size:
        return size
    side = min(height, width)
    return max(2, side - side % 2)


def batches(frames: Iterable[np.ndarray], clip_frames: int, clips: int) -> Iterator[tuple[np.ndarray, int]]:
    """(clips, clip_frames, H, W, 3) batches of consecutive frames and how many of their frames are real.

    The last batch is padded by repeating the last frame: its last real clip ends with copies of the
    video's last frame, and the clips after it are copies of that frame too (dropped by the caller)."""
    size = clip_frames * clips
    buffer: list[np.ndarray] = []
    for frame in frames:
        buffer.append(frame)
        if len(buffer) == size:
            yield np.stack(buffer).reshape((clips, clip_frames) + frame.shape), size
            buffer = []
    if buffer:
        count = len(buffer)
        padded = np.stack(buffer + [buffer[-1]] * (size - count))
        yield padded.reshape((clips, clip_frames) + padded.shape[1:]), count


# ----------------------------------------------------------------------------------------------------------------
# Writing


class Mp4Writer:
    """H.264 frames into a temp file beside ``path``; ``commit`` renames it to ``path``. Leaving the ``with``
    block uncommitted (an exception) deletes the temp file: no partial video is ever left."""

    def __init__(self, path: Path, fps: Fraction, side: int | tuple[int, int], pixel_format: str = PIXEL_FORMAT):
        """``side``: a square's side, or (width, height)."""
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(descriptor)
        self.temporary = Path(temporary)
        self.container = None
        try:
            self.container = av.open(temporary, "w", format="mp4")
            self.stream = self.container.add_stream(CODEC, rate=fps)
            self.stream.width, self.stream.height = (side, side) if isinstance(side, int) else side
            self.stream.pix_fmt = pixel_format
            self.stream.options = {"crf": CRF}
        except BaseException:
            self.discard()
            raise
        self.side = side
        self.count = 0

    def write(self, frames: np.ndarray) -> None:
        """Encodes uint8 frames (N, height, width, 3)."""
        import av

        for frame in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                self.container.mux(packet)
            self.count += 1

    def commit(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None
        give_default_mode(self.temporary)  # mkstemp's 0600 suits the temp file, not the video handed on
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.close()
            self.container = None
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        if self.temporary.exists():
            self.discard()


def _resized(frames: np.ndarray, side: int) -> np.ndarray:
    if frames.shape[1] == side:
        return frames
    return np.stack([video.resize_box(f, (0, 0, f.shape[1], f.shape[0]), (side, side)) for f in frames])


# ----------------------------------------------------------------------------------------------------------------
# One input, many inputs


def anonymize_video(bundle, source_path: Path, output: Path, *, detector=None, predictions: bool = False,
                    keep_size: bool = False, full_colour: bool = False, fps: Fraction = DEFAULT_FPS,
                    batch_clips: int = BATCH_CLIPS, progress: bool = True, warn: Callable[[str], None] | None = None,
                    **face_options) -> Result:
    """Anonymises one input into ``output`` (an mp4), with F_u's per-clip predictions beside it on request.

    ``detector`` (``face_detection.Detector``): every face in the full frame (``face_options``: margin, carry,
    no_face; see ``anonymize_faces``); None: the centred square.
    ``full_colour``: encode 4:4:4 instead of the playable 4:2:0, whose halved colour resolution blurs the
    anonymiser's per-pixel colour (on the tiny test bundle: 11 grey levels mean error against 3)."""
    from tqdm.auto import tqdm

    warn = warn or _warn
    if detector is not None:
        if predictions:
            raise ValueError("--predictions needs --centre-square for now (per-face expression clips are not "
                             "written yet)")
        if keep_size:
            raise ValueError("--keep-size applies to --centre-square only: full-frame output keeps the input's size")
        return anonymize_faces(bundle, detector, source_path, output, full_colour=full_colour, fps=fps,
                               batch_clips=batch_clips, progress=progress, warn=warn, **face_options)
    start = time.perf_counter()
    size = bundle.image_size
    if predictions:
        check_can_predict(bundle)
    with open_source(source_path, fps) as source:
        first = next(source.frames, None)
        if first is None:  # a video raises its own BadInput at the end of its frames
            raise BadInput(source_path, "no frame could be read")
        note = resize_note(*first.shape[:2], size)
        if note:
            warn(f"{source_path}: {note}")
        side = output_side(*first.shape[:2], size, keep_size)
        frames = (to_bundle_size(f, size) for f in itertools.chain([first], source.frames))
        pixel_format = FULL_COLOUR if full_colour else PIXEL_FORMAT
        with Mp4Writer(output, source.fps, side, pixel_format) as writer, \
                tqdm(total=source.frame_count, desc=source_path.name, unit="frame", dynamic_ncols=True,
                     disable=None if progress else True, leave=False) as bar:
            logits = _anonymise_into(bundle, frames, writer, batch_clips, predictions, bar.update)
            json_path = output.with_suffix(".json") if predictions else None
            record = predictions_record(bundle, source_path, output, logits, writer.count, source.fps) \
                if predictions else {}
            try:
                if json_path is not None:
                    write_json_atomically(json_path, record)
                writer.commit()
            except BaseException:
                if json_path is not None:
                    json_path.unlink(missing_ok=True)
                raise
    return Result(source_path, output, json_path, writer.count, source.fps, side, time.perf_counter() - start,
                  record.get("expression"))


def _anonymise_into(bundle, frames: Iterable[np.ndarray], writer: Mp4Writer, batch_clips: int, predictions: bool,
                    advance: Callable[[int], object]) -> np.ndarray | None:
    """Anonymises bundle-size frames batch by batch into ``writer``; F_u's logits per real clip on request."""
    clip_frames, logits = bundle.num_frames, []
    for batch, count in batches(frames, clip_frames, batch_clips):
        anonymised = bundle.anonymise(batch)
        writer.write(_resized(anonymised.reshape((-1,) + anonymised.shape[2:])[:count], writer.side))
        if predictions:
            logits.append(bundle.predict(anonymised)[: math.ceil(count / clip_frames)])
        advance(count)
    return np.concatenate(logits) if predictions else None


# ----------------------------------------------------------------------------------------------------------------
# Faces in the full frame


def bundle_margin(bundle) -> float:
    """The crop margin the bundle's training clips had (``data.face_margin`` in its config), else the default
    of ``prepare --face_crop detect`` (``video.FACE_MARGIN``)."""
    margin = bundle.config.data.get("face_margin", None)
    return video.FACE_MARGIN if margin is None else float(margin)


def detect_faces(detector, frames: Iterable[np.ndarray], batch: int = DETECT_BATCH,
                 advance: Callable[[int], object] = lambda n: None) -> tuple[list, tuple[int, int]]:
    """Every frame's face boxes (N_t, 4) and the frames' (height, width); all frames must have one size."""
    boxes, shape, chunk = [], None, []

    def run():  # a short last chunk is padded with its last frame: one PNet shape per video
        found = detector.detect_batch(np.stack(chunk + [chunk[-1]] * (batch - len(chunk))), len(chunk))
        boxes.extend(faces.boxes for faces in found)
        advance(len(chunk))
        chunk.clear()

    for frame in frames:
        if shape is None:
            shape = frame.shape[:2]
        elif frame.shape[:2] != shape:
            raise ValueError(f"frame {len(boxes) + len(chunk)} is {frame.shape[1]}x{frame.shape[0]} px, the first "
                             f"{shape[1]}x{shape[0]}: every frame of a video must have one size")
        chunk.append(frame)
        if len(chunk) == batch:
            run()
    if chunk:
        run()
    return boxes, shape


def feather(side: int, inner: int) -> np.ndarray:
    """(side, side) blending weights: 1 on the centred inner x inner square (the face), falling linearly to 0 at
    the crop's edge, so the pasted crop has no seam and the face itself is fully replaced."""
    ramp = (side - inner) / 2
    if ramp <= 0:
        return np.ones((side, side), np.float32)
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5  # to the nearer edge, pixel centres
    weight = np.clip(distance / ramp, 0.0, 1.0).astype(np.float32)
    return np.minimum(weight[:, None], weight[None, :])


def paste(frame: np.ndarray, crop: np.ndarray, square: tuple[int, int, int], inner: int) -> None:
    """Blends an anonymised crop (any size) into ``frame`` (uint8, in place) over the (left, top, side) square,
    feathered (``feather``); the part of the square outside the frame is dropped."""
    left, top, side = square
    height, width = frame.shape[:2]
    resized = video.resize_box(crop, (0, 0, crop.shape[1], crop.shape[0]), (side, side)).astype(np.float32)
    weight = feather(side, inner)[..., None]
    y0, y1, x0, x1 = max(top, 0), min(top + side, height), max(left, 0), min(left + side, width)
    if y0 >= y1 or x0 >= x1:
        return
    part = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    region = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.rint(weight[part] * resized[part] + (1 - weight[part]) * region).astype(np.uint8)


def pixelated(frame: np.ndarray, blocks: int = PIXELATE_BLOCKS) -> np.ndarray:
    """The frame as block means, ``blocks`` blocks along its shorter side: what a fallback frame shows."""
    height, width = frame.shape[:2]
    block = max(1, math.ceil(min(height, width) / blocks))
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    padded = np.pad(frame, ((0, rows * block - height), (0, cols * block - width), (0, 0)), mode="edge")
    means = padded.reshape(rows, block, cols, block, 3).mean(axis=(1, 3))
    return np.rint(np.repeat(np.repeat(means, block, 0), block, 1)[:height, :width]).astype(np.uint8)


def even(frame: np.ndarray) -> np.ndarray:
    """The frame without an odd last row or column (4:2:0 video needs even sides)."""
    height, width = frame.shape[:2]
    return frame[: height - height % 2, : width - width % 2]


def render(bundle, frames: Iterable[np.ndarray], plans: list, margin: float, batch_clips: int,
           emit: Callable[[np.ndarray], object]) -> None:
    """The output frames, in order, to ``emit``: each planned face cropped, anonymised in ``bundle.anonymise``'s
    fixed batches of ``batch_clips`` x T crops, and pasted back; a fallback frame pixelated whole."""
    size, per_call = bundle.image_size, batch_clips * bundle.num_frames
    waiting: list[np.ndarray] = []  # output frames whose crops are not back yet, in order
    crops: list[np.ndarray] = []
    owners: list[tuple[int, tuple[int, int, int], int]] = []  # (index in waiting, square, inner side)

    def flush():
        for start in range(0, len(crops), per_call):
            chunk = crops[start : start + per_call]
            batch = np.stack(chunk + [chunk[-1]] * (per_call - len(chunk)))
            done = bundle.anonymise(batch.reshape((batch_clips, bundle.num_frames) + batch.shape[1:]))
            done = done.reshape((-1,) + done.shape[2:])
            for crop, (k, square, inner) in zip(done, owners[start : start + per_call]):
                paste(waiting[k], crop, square, inner)
        for frame in waiting:
            emit(frame)
        waiting.clear()
        crops.clear()
        owners.clear()

    count = 0
    for frame, plan in zip(frames, plans):
        count += 1
        if plan.fallback:
            waiting.append(pixelated(frame))
            continue
        out = frame.copy()
        for _, box in plan.faces:
            square = video.face_square(box, margin)
            inner = min(square[2], round(max(box[2] - box[0], box[3] - box[1])))
            crops.append(video.crop_square(frame, square, size))
            owners.append((len(waiting), square, inner))
        waiting.append(out)
        if len(crops) >= per_call:
            flush()
    flush()
    if count != len(plans):
        raise ValueError(f"the second read gave {count} frames, the first {len(plans)}")


def anonymize_faces(bundle, detector, source_path: Path, output: Path, *, margin: float | None = None,
                    carry: int = face_tracks.CARRY, no_face: str = "pixelate", full_colour: bool = False,
                    fps: Fraction = DEFAULT_FPS, batch_clips: int = BATCH_CLIPS, progress: bool = True,
                    warn: Callable[[str], None] | None = None) -> Result:
    """Every face of one input anonymised in the full frame (the module's first way): detect and track (first
    read), then crop, anonymise, paste back and encode (second read), into a temp file renamed when whole."""
    from tqdm.auto import tqdm

    warn = warn or _warn
    start = time.perf_counter()
    margin = bundle_margin(bundle) if margin is None else margin
    bar_options = dict(unit="frame", dynamic_ncols=True, disable=None if progress else True, leave=False)
    with open_source(source_path, fps) as source, \
            tqdm(total=source.frame_count, desc=f"{source_path.name}: faces", **bar_options) as bar:
        boxes, shape = detect_faces(detector, source.frames, advance=bar.update)
        rate = source.fps
    if shape is None:
        raise BadInput(source_path, "no frame could be read")
    height, width = shape
    if height % 2 or width % 2:
        warn(f"{source_path}: {width}x{height} px: 4:2:0 video needs even sides; the odd last row/column is dropped")
    tracks = face_tracks.link(boxes)
    plans = face_tracks.plan(tracks, len(boxes), height, width, carry=carry, no_face=no_face)
    fallback = tuple(t for t, p in enumerate(plans) if p.fallback)
    if fallback:
        warn(f"{source_path}: {len(fallback)} of {len(plans)} frames pixelated whole (a face lost or none found): "
             f"frames {_ranges(fallback)}")
    pixel_format = FULL_COLOUR if full_colour else PIXEL_FORMAT
    size = (width - width % 2, height - height % 2)
    with open_source(source_path, fps) as source, Mp4Writer(output, rate, size, pixel_format) as writer, \
            tqdm(total=len(plans), desc=f"{source_path.name}: anonymising", **bar_options) as bar:
        def emit(frame):
            writer.write(even(frame)[None])
            bar.update()

        render(bundle, source.frames, plans, margin, batch_clips, emit)
        writer.commit()
    return Result(source_path, output, None, writer.count, rate, min(size), time.perf_counter() - start,
                  width=size[0], height=size[1], faces=len(tracks), fallback_frames=fallback,
                  carried_frames=sum(p.carried > 0 for p in plans))


def _ranges(frames: tuple[int, ...]) -> str:
    """0,1,2,5 -> '0-2, 5'."""
    parts, begin = [], None
    for k, t in enumerate(frames):
        if begin is None:
            begin = t
        if k + 1 == len(frames) or frames[k + 1] != t + 1:
            parts.append(f"{begin}-{t}" if t > begin else f"{t}")
            begin = None
    return ", ".join(parts)


def check_can_predict(bundle) -> None:
    if not bundle.has_utility:
        raise ValueError(f"--predictions: bundle {bundle.path} has no utility model F_u (export the run with "
                         f"--with-utility)")


def _warn(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def predictions_record(bundle, source: Path, output: Path, logits: np.ndarray, frames: int, fps: Fraction) -> dict:
    """F_u's expression probabilities per clip of T frames (the last clip padded with copies of the last
    frame), and for the whole video their mean."""
    names = bundle.expressions or [str(k) for k in range(logits.shape[-1])]
    z = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    t = bundle.num_frames
    clips = [{"first_frame": k * t, "frames": min(t, frames - k * t), "padded_frames": max(0, (k + 1) * t - frames),
              "expression": names[int(np.argmax(p))], "probabilities": _rounded(p)}
             for k, p in enumerate(probabilities)]
    mean = probabilities.mean(axis=0)
    return {"input": str(source), "video": str(output), "bundle": str(bundle.path), "frames": frames,
            "fps": float(fps), "clip_frames": t, "classes": names, "expression": names[int(np.argmax(mean))],
            "mean_probabilities": _rounded(mean), "clips": clips}


def _rounded(p: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in p]


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """Where each input's mp4 goes: ``out`` itself for one input and an ``.mp4`` out, else ``out/<name>.mp4``."""
    inputs, out = [Path(p) for p in inputs], Path(out)
    if out.suffix.lower() == ".mp4" and not out.is_dir():
        if len(inputs) > 1:
            raise ValueError(f"-o {out}: {len(inputs)} inputs need an output directory, not an .mp4 file")
        paths = [out]
    else:
        paths = [out / f"{(p.resolve().name if p.is_dir() else p.stem)}.mp4" for p in inputs]
    seen: dict[Path, Path] = {}
    for source, path in zip(inputs, paths, strict=True):
        if path.resolve() in seen:
            raise ValueError(f"-o {out}: {seen[path.resolve()]} and {source} would both be written to {path}; "
                             f"anonymise them into different directories")
        if path.resolve() == source.resolve():
            raise ValueError(f"-o {out}: the output {path} would replace its input; choose another -o")
        seen[path.resolve()] = source
    return paths


def anonymize_all(bundle, inputs: list[Path], out: Path, **options) -> tuple[list[Result], dict[Path, str]]:
    """Anonymises every input, printing each result (stdout) or failure (stderr) and going on after a failure.

    Returns the results and the failures (input -> reason)."""
    import av

    if options.get("predictions"):
        check_can_predict(bundle)
    if options.get("detector") is not None and (options.get("predictions") or options.get("keep_size")):
        raise ValueError("--predictions and --keep-size need --centre-square (full-frame output keeps the input's "
                         "size; per-face expression clips are not written yet)")
    paths = output_paths(inputs, out)
    seconds = compile_chain(bundle, options.get("batch_clips", BATCH_CLIPS), options.get("predictions", False))
    print(f"compiled the chain for batches of {options.get('batch_clips', BATCH_CLIPS)} clips of {bundle.num_frames} "
          f"frames in {seconds:.1f} s")
    results, failures = [], {}
    for source, output in zip(inputs, paths, strict=True):
        try:
            result = anonymize_video(bundle, Path(source), output, **options)
        except BadInput as error:
            failures[source] = error.reason
            print(f"failed: {error}", file=sys.stderr)
            continue
        except (ValueError, OSError, av.error.FFmpegError) as error:  # e.g. an encoder error, a full disk
            failures[source] = f"{type(error).__name__}: {error}"
            print(f"failed: {source}: {failures[source]}", file=sys.stderr)
            continue
        results.append(result)
        print(format_result(result))
    return results, failures


def compile_chain(bundle, batch_clips: int, predictions: bool) -> float:
    """Compiles ``anonymise`` (and ``predict``) for the batch shape every input uses, so that the timings
    reported per input are throughput, not compilation; returns the seconds it took."""
    start = time.perf_counter()
    batch = np.zeros((batch_clips, bundle.num_frames, bundle.image_size, bundle.image_size, 3), np.uint8)
    anonymised = bundle.anonymise(batch)
    if predictions:
        bundle.predict(anonymised)
    return time.perf_counter() - start


def format_result(result: Result) -> str:
    rate = result.frames / result.seconds if result.seconds > 0 else float("inf")
    width, height = result.width or result.size, result.height or result.size
    line = (f"{result.source} -> {result.output}: {result.frames} frames at {float(result.fps):g} fps, "
            f"{width}x{height} px, {result.seconds:.1f} s ({rate:.1f} frames/s)")
    if result.faces is not None:
        line += (f"; {result.faces} face track(s), {result.carried_frames} frames with a lost face's last box, "
                 f"{len(result.fallback_frames)} frames pixelated whole (fallback)")
    if result.predictions is not None:
        line += f"; predictions {result.predictions} (whole video: {result.expression})"
    return line
