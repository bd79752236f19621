"""Faces along a video: per-frame detections linked into tracks, boxes smoothed along each track, and the plan of
what each output frame shows, fail-safe.

All of it runs on the boxes of the whole video at once (``anonymize`` detects in a first pass and renders in a
second), so a track's smoothing looks both ways and a lost face is known before any frame is written:

* a detection joins the track whose last box overlaps it most (IoU >= ``LINK_IOU``), or failing that whose last
  box's centre is nearest, within ``NEAR`` box sides (a fast face, or one unseen for a while); else it starts a
  track;
* each track's boxes (x0, y0, x1, y1) are smoothed by a line fitted over the detections within ``SMOOTH`` frames
  either side;
* a track unseen for up to ``CARRY`` frames keeps its last box (``carried``); longer, and the whole frame is
  pixelated (``fallback``) until the track is seen again, unless its last box touched the frame's edge (the
  person left the picture);
* a frame with no face at all is pixelated too (``no_face='pixelate'``, the default: an empty detection cannot be
  told from a missed face) or written unchanged (``no_face='keep'``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

LINK_IOU = 0.3  # a detection continues a track whose last box it overlaps this much
NEAR = 1.0  # ... or whose last box's centre is within this many of its sides (a fast face, or one long unseen)
CARRY = 5  # frames a lost track keeps its last box before the frame falls back
SMOOTH = 2  # frames either side averaged into a track's box
EDGE = 0.05  # a last box within this share of its side from the frame's edge left the picture
NO_FACE = ("pixelate", "keep")


@dataclasses.dataclass
class Track:
    """One face through the video: its detected boxes by frame (x0, y0, x1, y1)."""

    ident: int
    boxes: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def first(self) -> int:
        return min(self.boxes)

    @property
    def last(self) -> int:
        return max(self.boxes)


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """What one output frame gets: the faces to anonymise as (track, box) and whether it falls back to a
    pixelated whole frame (then ``faces`` is empty), and why."""

    faces: tuple[tuple[int, np.ndarray], ...] = ()
    carried: int = 0  # how many of the faces are a lost track's last box
    fallback: str | None = None  # None, 'lost' (a tracked face was lost) or 'no_face'


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def link(detections: Sequence[np.ndarray], link_iou: float = LINK_IOU, near: float = NEAR) -> list[Track]:
    """Tracks from per-frame boxes (each (N_t, 4)), greedily: the best overlaps first (then the nearest centres),
    each box and track once."""
    tracks: list[Track] = []
    for t, boxes in enumerate(detections):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        last = np.array([tr.boxes[tr.last] for tr in tracks]).reshape(-1, 4)
        overlap = iou_matrix(last, boxes)
        side = np.maximum(last[:, 2] - last[:, 0], last[:, 3] - last[:, 1])[:, None]
        distance = np.linalg.norm(_centre(last)[:, None] - _centre(boxes)[None], axis=-1) / np.maximum(side, 1e-9)
        valid = (overlap >= link_iou) | (distance <= near)
        score = overlap - 1e-3 * distance
        taken_tracks, taken_boxes = set(), set()
        for k, j in sorted(np.argwhere(valid).tolist(), key=lambda kj: -score[kj[0], kj[1]]):
            if k in taken_tracks or j in taken_boxes:
                continue
            tracks[k].boxes[t] = boxes[j]
            taken_tracks.add(k)
            taken_boxes.add(j)
        for j in range(len(boxes)):
            if j not in taken_boxes:
                tracks.append(Track(len(tracks), {t: boxes[j]}))
    return tracks


def smoothed(track: Track, window: int = SMOOTH) -> dict[int, np.ndarray]:
    """The track's box per detected frame, from a straight line fitted to each coordinate over its detections
    within ``window`` frames either side: jitter averages out, and a face moving steadily is not lagged (a plain
    mean would pull the first and last boxes towards the middle of the track)."""
    frames = np.array(sorted(track.boxes), np.float64)
    boxes = np.stack([track.boxes[int(t)] for t in frames])
    out = {}
    for t in frames:
        near = np.abs(frames - t) <= window
        if near.sum() < 3:
            out[int(t)] = boxes[frames == t][0]
            continue
        design = np.stack([np.ones(near.sum()), frames[near] - t], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, boxes[near], rcond=None)
        out[int(t)] = coefficients[0]  # the line's value at t
    return out


def left_the_picture(box: np.ndarray, height: int, width: int, edge: float = EDGE) -> bool:
    """Whether a box touches the frame's edge (within ``edge`` of its side): a face that stops being seen there
    walked out, rather than was missed."""
    margin = edge * max(box[2] - box[0], box[3] - box[1])
    return bool(box[0] <= margin or box[1] <= margin or box[2] >= width - margin or box[3] >= height - margin)


def plan(tracks: Sequence[Track], frames: int, height: int, width: int, *, carry: int = CARRY,
         window: int = SMOOTH, no_face: str = "pixelate") -> list[FramePlan]:
    """Each frame's faces (smoothed boxes, lost ones carried) or its fallback; see the module's rules."""
    if no_face not in NO_FACE:
        raise ValueError(f"no_face: expected one of {', '.join(NO_FACE)}, got {no_face!r}")
    faces: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(frames)]
    carried, lost = np.zeros(frames, int), np.zeros(frames, bool)
    for track in tracks:
        boxes = smoothed(track, window)
        seen = sorted(boxes)
        ends_at_edge = left_the_picture(boxes[seen[-1]], height, width)
        for a, b in zip(seen, seen[1:] + [frames], strict=True):
            faces[a].append((track.ident, boxes[a]))
            for t in range(a + 1, b):
                if t - a <= carry:
                    faces[t].append((track.ident, boxes[a]))
                    carried[t] += 1
                elif b < frames or not ends_at_edge:
                    lost[t] = True
    plans = []
    for t in range(frames):
        if lost[t]:
            plans.append(FramePlan(fallback="lost"))
        elif not faces[t] and no_face == "pixelate":
            plans.append(FramePlan(fallback="no_face"))
        else:
            plans.append(FramePlan(tuple(faces[t]), int(carried[t])))
    return plans


def _centre(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
