"""Anonymising videos with an exported bundle (``ppfer-jax anonymize``).

A video (any file PyAV/FFmpeg reads: mp4, avi, flv, mov, mkv, webm) or a directory
of frame images becomes an H.264 mp4 of its privacy-preserved, feature-compensated
frames, at the input's frame rate and frame count:

* every frame is reduced to the bundle's size as the training clips were: the largest
  centred square is kept (a non-square frame loses its sides, and a warning says so)
  and resized to ``image_size`` x ``image_size``;
* frames are processed in clips of the bundle's ``num_frames`` (T) frames, a fixed batch
  of clips per jitted call so that it compiles once; the last clip is padded by repeating
  the last frame and the padding is dropped. The chain works frame by frame, so each
  output frame is the chain applied to its input frame; the clips matter only for F_u's
  per-clip expression predictions (``--predictions``, a JSON beside the mp4);
* frames are decoded, anonymised and encoded as a stream: memory holds one batch, not the
  video. Only anonymised frames reach the encoder, and nothing of the input's container
  (metadata included) is copied;
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

DEFAULT_FPS = Fraction(25)  # a directory of frames has no frame rate of its own
BATCH_CLIPS = 8  # clips of T frames per jitted call
CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"  # what every player reads; needs even width and height; halves the colour resolution
FULL_COLOUR = "yuv444p"  # keeps every pixel's colour (the anonymiser's output is rich in it); few players read it
CRF = "18"  # x264's "visually lossless" quality: the anonymised detail survives the encode


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

    def __init__(self, path: Path, fps: Fraction, side: int, pixel_format: str = PIXEL_FORMAT):
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
            self.stream.width = self.stream.height = side
            self.stream.pix_fmt = pixel_format
            self.stream.options = {"crf": CRF}
        except BaseException:
            self.discard()
            raise
        self.side = side
        self.count = 0

    def write(self, frames: np.ndarray) -> None:
        """Encodes uint8 frames (N, side, side, 3)."""
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


def anonymize_video(bundle, source_path: Path, output: Path, *, predictions: bool = False, keep_size: bool = False,
                    full_colour: bool = False, fps: Fraction = DEFAULT_FPS, batch_clips: int = BATCH_CLIPS,
                    progress: bool = True, warn: Callable[[str], None] | None = None) -> Result:
    """Anonymises one input into ``output`` (an mp4), with F_u's per-clip predictions beside it on request.

    ``full_colour``: encode 4:4:4 instead of the playable 4:2:0, whose halved colour resolution blurs the
    anonymiser's per-pixel colour (on the tiny test bundle: 11 grey levels mean error against 3)."""
    from tqdm.auto import tqdm

    warn = warn or _warn
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
    line = (f"{result.source} -> {result.output}: {result.frames} frames at {float(result.fps):g} fps, "
            f"{result.size}x{result.size} px, {result.seconds:.1f} s ({rate:.0f} frames/s)")
    if result.predictions is not None:
        line += f"; predictions {result.predictions} (whole video: {result.expression})"
    return line
