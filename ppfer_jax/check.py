"""Component check: every network of the method, built from a config and run on a real batch.

It answers "does this config build, and do the shapes line up?" in seconds, before
any training: the wavelet bands feed the enhancers and band controllers, frames
feed the validator, expression controller and compensator, clips feed the utility
model. Inputs are synthetic talking-face clips rendered at the configured size.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import synthetic
from data_pipelines.files import write_json_atomically
from ppfer_jax import wavelets
from ppfer_jax.figures import frame_grid, save_png, synthetic_preview
from ppfer_jax.models import build_model
from ppfer_jax.nets import NETWORKS, PAPER_NETWORKS

NUM_CLIPS = 2


def run_check(config, workdir: Path) -> dict:
    """Builds and runs each role's network once; writes previews and ``check.json`` to ``workdir``."""
    workdir = Path(workdir)
    spec = synthetic.spec_from_config(config)
    source = synthetic.SyntheticFaces(spec, "train")
    clips = np.stack([source[i]["video"] for i in range(NUM_CLIPS)])
    frames = jnp.asarray(clips, jnp.float32) / 255.0
    wave = dict(wavelet=config.wavelet.name, spatiotemporal=config.wavelet.spatiotemporal)
    low, high = jax.jit(lambda f: wavelets.split(f, mode=config.wavelet.mode, **wave))(frames)
    rebuilt = jax.jit(lambda lo, hi: wavelets.merge(lo, hi, **wave))(low, high)

    key = jax.random.key(config.seed)
    rows = []
    for role, spec_key, x, fields in _roles(config, frames, low, high):
        key, init_key = jax.random.split(key)
        rows.append(_run_model(role, config.model[spec_key], config.dtype, x, fields, init_key))

    workdir.mkdir(parents=True, exist_ok=True)
    save_png(workdir / "data_preview.png", synthetic_preview(spec, "train", 4))
    save_png(workdir / "bands_preview.png", _bands_figure(frames[0], low[0], high[0], rebuilt[0], low.shape[-1]))
    summary = dict(
        config=config.to_dict(),
        devices=[str(d) for d in jax.devices()],
        clip_shape=list(clips.shape[1:]),
        low_shape=list(low.shape[1:]),
        high_shape=list(high.shape[1:]),
        reconstruction_max_abs_error=float(jnp.max(jnp.abs(rebuilt - frames))),
        models=rows,
    )
    write_json_atomically(workdir / "check.json", summary, default=str)
    return summary


def _roles(config, frames, low, high):
    """(label, config section, input, fields) for each of the paper's networks (``nets.NETWORKS``)."""
    per_frame = lambda x: x.reshape((-1,) + x.shape[-3:])  # noqa: E731  (B, T, h, w, c) -> (B*T, h, w, c)
    # one frame per clip keeps paper-size checks affordable on a CPU
    inputs = {"low": per_frame(low), "high": per_frame(high), "frame": frames[:, 0], "clip": frames}
    return [(NETWORKS[name].label, NETWORKS[name].section, inputs[NETWORKS[name].input], NETWORKS[name].fields(config))
            for name in PAPER_NETWORKS]


def _run_model(role, spec, dtype, x, fields, key) -> dict:
    model = build_model(spec, dtype=dtype, **fields)
    start = time.perf_counter()
    variables = jax.jit(model.init)(key, x)
    out = jax.block_until_ready(jax.jit(model.apply)(variables, x))
    seconds = time.perf_counter() - start
    if not bool(jnp.all(jnp.isfinite(out))):
        raise FloatingPointError(f"{role}: {spec['name']} produced non-finite outputs on a real batch")
    count = lambda tree: int(sum(np.prod(p.shape) for p in jax.tree.leaves(tree)))  # noqa: E731
    return dict(role=role, model=spec["name"], input_shape=list(x.shape), output_shape=list(out.shape),
                params=count(variables["params"]), batch_stats=count(variables.get("batch_stats", {})),
                seconds=round(seconds, 3))


def _bands_figure(frames, low, high, rebuilt, channels):
    """Rows: original clip, low band (scaled to [0, 1]), high-band magnitude, reconstruction.

    Bands are shown at full size (nearest-neighbour) so every row lines up with the original.
    """
    scale_low = low / jnp.maximum(jnp.max(low), 1e-6)
    detail = sum(jnp.abs(b) for b in jnp.split(high, high.shape[-1] // channels, axis=-1))
    detail = detail / jnp.maximum(jnp.max(detail), 1e-6)
    rows = [frames, _to_full_size(scale_low, frames.shape), _to_full_size(detail, frames.shape), rebuilt]
    return frame_grid([np.asarray(r) for r in rows],
                      row_labels=["original", "low band", "|high band|", "merge(low, high)"], scale=2)


def _to_full_size(band, shape):
    for axis in range(3):  # T, H, W
        band = jnp.repeat(band, shape[axis] // band.shape[axis], axis=axis)
    return band


def format_summary(summary: dict) -> str:
    lines = [f"devices: {', '.join(summary['devices'])}",
             f"clip {tuple(summary['clip_shape'])} -> low band {tuple(summary['low_shape'])}, "
             f"high band {tuple(summary['high_shape'])}; "
             f"merge(split(x)) max error {summary['reconstruction_max_abs_error']:.1e}",
             "",
             f"{'role':32s} {'model':9s} {'input':>22s} {'output':>18s} {'params':>13s} {'s':>7s}"]
    for row in summary["models"]:
        lines.append(f"{row['role']:32s} {row['model']:9s} {str(tuple(row['input_shape'])):>22s} "
                     f"{str(tuple(row['output_shape'])):>18s} {row['params']:>13,d} {row['seconds']:>7.2f}")
    return "\n".join(lines)
