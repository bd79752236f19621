"""The optical-flow baseline (paper Table 1 "Optical Flow"): clips replaced by their dense motion.

The paper uses VideoFlow; this project stands in OpenCV's Farneback dense flow (``FLOW_METHOD``, named in
the report). Frame t of the output shows the flow from frame t to t+1, colour-coded the usual way -- hue
is the direction (0 degrees = +x, to the right, is red; image coordinates, +y down, so 90 degrees points
down), brightness the magnitude up to ``max_magnitude`` pixels per frame -- and the last frame repeats
the last flow, so F_u keeps its T frames. Computed on the host, clip by clip.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ppfer_jax.anonymised import map_clips

FLOW_METHOD = "OpenCV Farneback dense optical flow (stand-in for the paper's VideoFlow)"


@dataclasses.dataclass(frozen=True)
class FarnebackParams:
    """cv2.calcOpticalFlowFarneback's settings; the defaults suit 32-112 px face crops."""

    pyr_scale: float = 0.5
    levels: int = 2
    winsize: int = 9
    iterations: int = 5
    poly_n: int = 5
    poly_sigma: float = 1.1
    flags: int = 0


def _check_video(video: np.ndarray, rank: int, name: str) -> None:
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 numpy array, got {getattr(video, 'dtype', type(video))}")
    if video.ndim != rank or video.shape[-1] != 3:
        layout = "(T, H, W, 3)" if rank == 4 else "(B, T, H, W, 3)"
        raise ValueError(f"{name}: expected {layout}, got shape {video.shape}")
    if video.shape[-4] < 2:
        raise ValueError(f"{name}: flow needs at least 2 frames per clip, got {video.shape[-4]}")


def flow_fields(video: np.ndarray, params: FarnebackParams | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (T-1, H, W, 2): (dx, dy) in pixels from frame t to t+1."""
    _check_video(video, 4, "flow_fields: video")
    p = params or FarnebackParams()
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in video]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, p.pyr_scale, p.levels, p.winsize, p.iterations,
                                                  p.poly_n, p.poly_sigma, p.flags)
                     for a, b in zip(grey[:-1], grey[1:])]).astype(np.float32)


def render_flow(flow: np.ndarray, max_magnitude: float) -> np.ndarray:
    """(..., H, W, 2) flow -> uint8 (..., H, W, 3) RGB: hue = direction, value = |flow| / max_magnitude."""
    if not max_magnitude > 0:
        raise ValueError(f"render_flow: max_magnitude must be > 0 pixels, got {max_magnitude!r}")
    if flow.shape[-1] != 2:
        raise ValueError(f"render_flow: expected (..., H, W, 2) flow, got shape {flow.shape}")
    dx, dy = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    hue = (np.degrees(np.arctan2(dy, dx)) % 360.0) / 60.0  # sextant of the colour wheel, [0, 6)
    value = np.clip(np.hypot(dx, dy) / max_magnitude, 0.0, 1.0)
    # HSV -> RGB at saturation 1: each channel ramps over the wheel.
    channels = [np.clip(np.abs((hue + shift) % 6.0 - 3.0) - 1.0, 0.0, 1.0) for shift in (0.0, 4.0, 2.0)]
    rgb = np.stack(channels, axis=-1) * value[..., None]
    return np.round(rgb * 255.0).astype(np.uint8)


def flow_video(video: np.ndarray, max_magnitude: float, params: FarnebackParams | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, H, W, 3) rendered flow; the last frame repeats the last flow."""
    rendered = render_flow(flow_fields(video, params), max_magnitude)
    return np.concatenate([rendered, rendered[-1:]], axis=0)


def flow_clips(videos: np.ndarray, max_magnitude: float, params: FarnebackParams | None = None) -> np.ndarray:
    """The batch version: uint8 (B, T, H, W, 3) -> uint8 (B, T, H, W, 3)."""
    _check_video(np.asarray(videos), 5, "flow_clips: videos")
    return np.stack([flow_video(clip, max_magnitude, params) for clip in np.asarray(videos)])


def anonymised_clips(ctx, split: str, method: str):
    """A split with every clip replaced by its rendered optical flow (computed on the host, with OpenCV)."""
    max_magnitude = ctx.config.baselines.optical_flow.max_magnitude
    return map_clips(ctx, ctx.source(split), lambda video: flow_clips(video, max_magnitude),
                         on_host=True)
