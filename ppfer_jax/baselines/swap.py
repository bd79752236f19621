"""The image-swapping baseline (paper Table 1 "Image Swapping", MobileFaceSwap [58] with one outside face).

On the synthetic set the swap is an oracle: every clip is re-rendered with the same expression trajectory,
pose, lighting and camera motion, performed by one fixed person from outside the data set's identities (a
'wild' person, ``baselines.swap.outside_identity``). No face-swap network can transfer expression better,
so the row is the upper bound of what swapping can do. On real data a swap needs a face-swap model this
project does not ship: the row reads "needs swapped videos" unless ``baselines.swap.directory`` holds
pre-swapped clips, one ``<split>/<index>.npy`` uint8 array (T, H, W, 3) per clip of the run's split, in
the split's order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines import synthetic
from data_pipelines.sources import ArraySource

NEEDS_VIDEOS = "needs swapped videos (set baselines.swap.directory to pre-swapped clips)"


def unavailable(config) -> str | None:
    """Why the row cannot run on this config, or None."""
    if config.data.name == "synthetic" or config.baselines.swap.directory:
        return None
    return NEEDS_VIDEOS


def anonymised_clips(ctx, split: str, method: str) -> ArraySource:
    """The split with every face swapped for the outside person (synthetic) or read from the directory."""
    config = ctx.config
    raw = ctx.source(split)
    if config.data.name == "synthetic":
        spec = synthetic.spec_from_config(config)
        source = synthetic.SyntheticFaces(spec, split)
        person = synthetic.identity_traits(spec, "wild", config.baselines.swap.outside_identity)
        video = np.stack([source.render_with_identity(i, person)["video"] for i in range(len(source))])
    else:
        video = _read_swapped(Path(config.baselines.swap.directory).expanduser() / split, raw)
    arrays = {k: np.asarray([raw[i][k] for i in range(len(raw))]) for k in ("identity", "expression", "eval_frame")}
    if ctx.splits.keep_originals:
        arrays["original"] = np.stack([raw[i]["video"] for i in range(len(raw))])
    return ArraySource({"video": video, **arrays})


def _read_swapped(directory: Path, raw) -> np.ndarray:
    clips = []
    for index in range(len(raw)):
        path = directory / f"{index}.npy"
        if not path.exists():
            raise FileNotFoundError(f"baselines.swap.directory: expected a swapped clip at {path} (one uint8 "
                                    f"(T, H, W, 3) .npy per clip of the split, in its order)")
        clip, expected = np.load(path), raw[index]["video"]
        if clip.dtype != np.uint8 or clip.shape != expected.shape:
            raise ValueError(f"{path}: expected uint8 {expected.shape}, got {clip.dtype} {clip.shape}")
        clips.append(clip)
    return np.stack(clips)
