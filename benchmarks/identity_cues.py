"""Where does identity live in the anonymised frames, and can the band enhancers remove it at all?

1. Cues: ridge classifiers, fit on every frame of the train clips and scored on every frame of the test clips,
   read identity from coarse features (mean colour, colour histogram, a 4x4 colour thumbnail, an 8x8 grey
   thumbnail, the 16x16 frame) of the raw clips and of each method's C in a finished run's workdir.
2. Capacity (``--swap_steps N``): the method's two band U-Nets (residual heads, from the identity map) trained
   by L1 to output the oracle swap -- the clip re-rendered on one outside person, `reproduce`'s Image Swapping
   row -- a target with no identity in it. If the enhancers learn that map, removing identity is within the
   architecture's reach and what Algorithm 1's game lacks is its objective or its steps. The same probes and
   the run's frozen C_fc score the output.

    python benchmarks/identity_cues.py --workdir workdir                     # after `ppfer-jax run`
    python benchmarks/identity_cues.py --workdir workdir --swap_steps 600
    python benchmarks/identity_cues.py --workdir workdir --swap_steps 1500 \
        --swap_override model.enhancer_low.features=32 --swap_override model.enhancer_high.features=32
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from ppfer_jax import losses, metrics
from ppfer_jax.config import load_config
from ppfer_jax.baselines import swap as face_swap
from ppfer_jax.nets import WAVELET, flatten_frames, to_float
from ppfer_jax.recipes import run
from ppfer_jax.parallel import mesh_from_config


def _pool(frames: np.ndarray, k: int) -> np.ndarray:
    n, h, w, c = frames.shape
    return frames.reshape(n, h // k, k, w // k, k, c).mean((2, 4))


def _histogram(frames: np.ndarray) -> np.ndarray:
    return np.stack([np.concatenate([np.histogram(f[..., c], 8, (0.0, 1.0))[0] for c in range(3)]) for f in frames])


FEATURES = {  # float frames (N, H, W, 3) in [0, 1] -> (N, D)
    "mean colour (3)": lambda f: f.mean((1, 2)),
    "colour histogram (24)": _histogram,
    "4x4 colour (48)": lambda f: _pool(f, f.shape[1] // 4).reshape(len(f), -1),
    "8x8 grey (64)": lambda f: _pool(f.mean(-1, keepdims=True), f.shape[1] // 8).reshape(len(f), -1),
    "16x16 colour (768)": lambda f: _pool(f, f.shape[1] // 16).reshape(len(f), -1),
}


def frames_and_identities(source) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of a split as float (N*T, H, W, 3) in [0, 1], and each frame's identity."""
    video = source.arrays["video"]
    return (video.reshape((-1,) + video.shape[2:]).astype(np.float32) / 255,
            np.repeat(source.arrays["identity"], video.shape[1]))


def cue_probes(train, test) -> dict:
    """Each feature's ridge attacker: fit on ``train`` (frames, identities), accuracy on ``test``."""
    return {name: round(metrics.ridge_accuracy(f(train[0]), train[1], f(test[0]), test[1]), 3)
            for name, f in FEATURES.items()}


def learn_swap(ctx, raw: np.ndarray, target: np.ndarray, steps: int, batch_clips: int, learning_rate: float,
               seed: int):
    """The band enhancers trained by L1 to map the uint8 clips ``raw`` to ``target`` (their oracle swap); returns the
    enhancers' variables."""
    nets = ctx.nets
    names = WAVELET.enhancers
    keys = jax.random.split(jax.random.key(seed, impl=ctx.config.rng_impl), len(names))
    variables = {n: nets.init(n, k) for n, k in zip(names, keys)}
    params = {n: v["params"] for n, v in variables.items()}
    stats = {n: v["batch_stats"] for n, v in variables.items()}
    tx = optax.adam(learning_rate)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, video, swapped):
        frames, _ = flatten_frames(to_float(video))
        wanted, _ = flatten_frames(to_float(swapped))

        def loss_fn(p):
            outs, new = [], {}
            for name, band in zip(names, nets.split(frames)):
                out, new[name] = nets.apply_train(name, p[name], stats[name], band)
                outs.append(out)
            return losses.l1(nets.merge(*outs), wanted), new
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    rng = np.random.default_rng(seed)
    for i in range(steps):
        pick = rng.integers(0, len(raw), batch_clips)
        params, stats, opt, loss = step(params, stats, opt, raw[pick], target[pick])
        if (i + 1) % 100 == 0:
            print(f"swap target step {i + 1}: L1 {float(loss):.4f}", flush=True)
    return {n: {"params": params[n], "batch_stats": stats[n]} for n in names}


def apply_enhancers(ctx, variables, video: np.ndarray) -> np.ndarray:
    """G of uint8 clips as float frames (N*T, H, W, 3) in [0, 1]."""
    run = jax.jit(lambda v: jnp.clip(WAVELET.apply(ctx.nets, variables, to_float(v)), 0.0, 1.0))
    out = np.concatenate([np.asarray(run(video[i:i + 64])) for i in range(0, len(video), 64)])
    return out.reshape((-1,) + out.shape[2:])


def expression_accuracy(ctx, frames: np.ndarray, expression: np.ndarray) -> float:
    """The run's frozen C_fc on every frame."""
    c_fc = ctx.network("c_fc", "pretrain/expression")
    predict = jax.jit(lambda x: jnp.argmax(ctx.nets.apply("c_fc", c_fc, x), -1))
    predicted = np.concatenate([np.asarray(predict(frames[i:i + 512])) for i in range(0, len(frames), 512)])
    return float(np.mean(predicted == expression))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished `ppfer-jax run` workdir")
    parser.add_argument("--config", default="configs/synthetic.py")
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, as the run was given")
    parser.add_argument("--swap_steps", type=int, default=0, help="train the enhancers to the oracle swap (0: skip)")
    parser.add_argument("--swap_override", action="append", default=[],
                        help="KEY=VALUE for the enhancers trained to the swap only (e.g. a wider U-Net)")
    parser.add_argument("--batch_clips", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()
    config = load_config(args.config, [f"--config.{o}" for o in args.override])
    ctx = run.context(config, args.workdir, mesh_from_config(config))
    start = time.perf_counter()
    results = {"workdir": args.workdir, "cues (ridge, train -> test frames)": {}}
    cues = results["cues (ridge, train -> test frames)"]
    for method in (None, *run.ANONYMISER_STAGES):
        cues[method or "raw"] = cue_probes(*(frames_and_identities(ctx.source(s, method)) for s in ("train", "test")))
        print(method or "raw", cues[method or "raw"], flush=True)
    if args.swap_steps:
        swap_config = load_config(args.config, [f"--config.{o}" for o in args.override + args.swap_override])
        ctx = run.context(swap_config, args.workdir, ctx.mesh)
        raw = {split: ctx.source(split).arrays for split in ("train", "test")}
        swap = {split: face_swap.anonymised_clips(ctx, split, "swap") for split in ("train", "test")}
        variables = learn_swap(ctx, raw["train"]["video"], swap["train"].arrays["video"], args.swap_steps,
                               args.batch_clips, args.learning_rate, config.seed)
        out = {split: (apply_enhancers(ctx, variables, arrays["video"]),
                       np.repeat(arrays["identity"], arrays["video"].shape[1])) for split, arrays in raw.items()}
        swap = {split: frames_and_identities(source) for split, source in swap.items()}
        swapped = swap["test"][0]
        expression = np.repeat(raw["test"]["expression"], raw["test"]["video"].shape[1])
        cues["swap target (oracle)"] = cue_probes(swap["train"], swap["test"])
        results["enhancers trained to the swap"] = {
            "steps": args.swap_steps, "overrides": args.swap_override, "cues": cue_probes(out["train"], out["test"]),
            "l1_to_swap_test": round(float(np.mean(np.abs(out["test"][0] - swapped))), 4),
            "c_fc_acc_every_test_frame": {
                "raw": round(expression_accuracy(ctx, frames_and_identities(ctx.source("test"))[0], expression), 3),
                "swap target": round(expression_accuracy(ctx, swapped, expression), 3),
                "enhancers' output": round(expression_accuracy(ctx, out["test"][0], expression), 3)}}
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
