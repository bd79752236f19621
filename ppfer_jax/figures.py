"""Figures of video frames: a labelled grid of clips, and a PNG writer that never leaves half a file.

Each row of a grid is one clip, e.g. (original, low band, high band, G, C) of the
same video, so the stages of the method can be compared frame by frame. Also the paper's
privacy-utility scatter (Figure 1), drawn with matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_pipelines.files import write_atomically

_GAP = 2  # pixels between frames and rows, before scaling
_LABEL_PAD = 4  # pixels around a row label
_BACKGROUND = 255
_TEXT_COLOUR = (0, 0, 0)


def frame_grid(rows: Sequence[np.ndarray], row_labels: Sequence[str] | None = None,
               num_frames: int | None = None, scale: int = 1) -> np.ndarray:
    """Lays clips out as rows of frames side by side; returns a uint8 (H', W', 3) image.

    rows: clips (T, H, W, C) with C in {1, 3}, uint8 or float in [0, 1] (floats are
      clipped). Clips may differ in size: each is enlarged by the largest whole factor
      that fits the biggest clip's cell (a half-size wavelet band shows at 2x) and centred.
    row_labels: one text per row, drawn with PIL's default font left of the row.
    num_frames: show this many evenly spaced frames of each clip (default: all).
    scale: whole-number enlargement of every frame (nearest neighbour).
    """
    clips = [_as_uint8_rgb(row, f"rows[{i}]") for i, row in enumerate(rows)]
    if not clips:
        raise ValueError("rows: expected at least one clip (T, H, W, C), got none")
    if row_labels is not None and len(row_labels) != len(clips):
        raise ValueError(f"row_labels: expected one label per row ({len(clips)}), got {len(row_labels)}")
    _check_positive_int("num_frames", num_frames, allow_none=True)
    _check_positive_int("scale", scale)

    clips = [_evenly_spaced_frames(clip, num_frames) for clip in clips]
    cell_h = scale * max(clip.shape[1] for clip in clips)
    cell_w = scale * max(clip.shape[2] for clip in clips)
    columns = max(clip.shape[0] for clip in clips)
    font = ImageFont.load_default()
    label_width = _label_column_width(font, row_labels)

    canvas = np.full((_GAP + len(clips) * (cell_h + _GAP), label_width + _GAP + columns * (cell_w + _GAP), 3),
                     _BACKGROUND, np.uint8)
    for r, clip in enumerate(clips):
        factor = min(cell_h // clip.shape[1], cell_w // clip.shape[2])
        frames = clip.repeat(factor, axis=1).repeat(factor, axis=2)
        top = _GAP + r * (cell_h + _GAP) + (cell_h - frames.shape[1]) // 2
        for c, frame in enumerate(frames):
            left = label_width + _GAP + c * (cell_w + _GAP) + (cell_w - frames.shape[2]) // 2
            canvas[top:top + frame.shape[0], left:left + frame.shape[1]] = frame
    if row_labels is None:
        return canvas

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for r, label in enumerate(row_labels):
        _, text_top, _, text_bottom = draw.textbbox((0, 0), label, font=font)
        row_middle = _GAP + r * (cell_h + _GAP) + cell_h // 2
        draw.text((_LABEL_PAD, row_middle - (text_top + text_bottom) // 2), label, fill=_TEXT_COLOUR, font=font)
    return np.asarray(image)


def synthetic_preview(spec, split: str, num_clips: int) -> np.ndarray:
    """A labelled uint8 image of ``num_clips`` clips of a synthetic split (``synthetic.preview_clips``)."""
    from data_pipelines import synthetic

    clips, labels = synthetic.preview_clips(spec, split, num_clips)
    return frame_grid(clips, row_labels=labels, scale=max(1, 128 // spec.image_size))


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 (H, W) or (H, W, 3) image as PNG via a temp file + rename, so readers never see half a file."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"image: expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    write_atomically(path, lambda file: Image.fromarray(image).save(file, format="PNG"))


def _as_uint8_rgb(clip, name: str) -> np.ndarray:
    """(T, H, W, C) uint8 or float [0, 1] -> uint8 (T, H, W, 3)."""
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: expected a clip (T, H, W, C) with C in {{1, 3}}, got shape {clip.shape}")
    if np.issubdtype(clip.dtype, np.floating):
        clip = np.round(np.clip(clip, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif clip.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 or float values, got {clip.dtype}")
    return np.broadcast_to(clip, clip.shape[:3] + (3,))


def _evenly_spaced_frames(clip: np.ndarray, num_frames: int | None) -> np.ndarray:
    if num_frames is None or num_frames >= clip.shape[0]:
        return clip
    return clip[np.round(np.linspace(0, clip.shape[0] - 1, num_frames)).astype(int)]


def _label_column_width(font, row_labels: Sequence[str] | None) -> int:
    if row_labels is None:
        return 0
    widths = [font.getbbox(label)[2] for label in row_labels]
    return max(widths, default=0) + 2 * _LABEL_PAD


def _check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def privacy_utility_scatter(points: Sequence[tuple[str, float, float]], chance_plr: float, chance_acc: float,
                            paper_points: Sequence[tuple[str, float, float]] | None = None,
                            secondary: Sequence[tuple[str, float, float]] | None = None) -> np.ndarray:
    """The paper's Figure 1: PLR (%) against ACC (%), one labelled point per (label, plr, acc); ``secondary``
    points (the ablations) small and grey, ``paper_points`` hollow. Returns a uint8 (H, W, 3) image.
    Matplotlib's Agg canvas, no pyplot: no global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 6), dpi=110)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for k, (label, plr, acc) in enumerate(points):
        ax.scatter([plr], [acc], s=70, color=f"C{k % 10}", zorder=3, label=label)
        right = plr > 75  # label on the left of points near the right edge, so it stays inside the axes
        ax.annotate(label, (plr, acc), textcoords="offset points", xytext=(-6 if right else 6, 4), fontsize=8,
                    ha="right" if right else "left")
    for label, plr, acc in secondary or ():
        ax.scatter([plr], [acc], s=22, color="0.55", marker="s", zorder=2)
        ax.annotate(label, (plr, acc), textcoords="offset points", xytext=(4, -9), fontsize=7, color="0.4")
    if paper_points:
        ax.scatter([p for _, p, _ in paper_points], [a for _, _, a in paper_points], s=60, facecolors="none",
                   edgecolors="0.6", zorder=2, label="paper (CREMA-D)")
    ax.axvline(chance_plr, color="0.3", linestyle="--", linewidth=1)
    ax.axhline(chance_acc, color="0.3", linestyle="--", linewidth=1)
    ax.annotate("chance", (chance_plr, 98), textcoords="offset points", xytext=(3, -2), fontsize=7, color="0.3")
    ax.annotate("chance", (50, chance_acc), textcoords="offset points", xytext=(0, 3), fontsize=7, color="0.3")
    ax.annotate("better", xy=(4, 96), xytext=(22, 78), fontsize=8, color="0.3",
                arrowprops=dict(arrowstyle="->", color="0.3"))
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="privacy leakage ratio, PLR (%) ↓",
           ylabel="utility accuracy, ACC (%) ↑", title="Privacy–utility trade-off (Figure 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
