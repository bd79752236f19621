"""Does a frame-level expression classifier trained on the `wild` people read expression on the training people?

The expression controller C_fc of Algorithm 2 is trained on DFEW's in-the-wild people and guides compensation on
CREMA-D's actors; on the synthetic set `wild` stands in for DFEW. This trains C_fc's architecture (the config's
``model.expression_controller``) on one random frame per step of the `wild` clips (across people) and, for
comparison, of the `train` clips (within people), and scores both on every frame of the `val` clips of the training
people, broken down by where the frame sits in its expression (rest, onset, apex, offset; from the renderer's
envelope) and by expression.

    python benchmarks/expression_transfer.py                                   # the default config
    python benchmarks/expression_transfer.py --override data.num_wild_identities=240 --steps 600
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import synthetic
from ppfer_jax.config import load_config
from ppfer_jax.models import build_model

PHASES = ("rest", "onset", "apex", "offset")


def frames_of(spec: synthetic.SyntheticSpec, split: str):
    """Every frame of a split: uint8 (N*T, H, W, 3), expression (N*T,), phase index (N*T,), clip (N*T,)."""
    source = synthetic.SyntheticFaces(spec, split)
    videos, expressions, phases = [], [], []
    for i in range(len(source)):
        videos.append(source[i]["video"])
        expressions.append(np.full(spec.num_frames, source.labels(i)[1]))
        phases.append(phase_of(source.expression_intensity(i)))
    clips = np.repeat(np.arange(len(source)), spec.num_frames)
    return (np.concatenate(videos), np.concatenate(expressions).astype(np.int32), np.concatenate(phases), clips)


def phase_of(envelope: np.ndarray) -> np.ndarray:
    """rest (< 0.2 of the apex), apex (>= 0.8), else onset before the peak and offset after it."""
    peak = int(np.argmax(envelope))
    phase = np.where(np.arange(len(envelope)) <= peak, 1, 3)
    phase = np.where(envelope >= 0.8, 2, phase)
    return np.where(envelope < 0.2, 0, phase)


def train_classifier(config, frames: np.ndarray, labels: np.ndarray, *, steps: int, batch_size: int, lr: float,
                     seed: int):
    """C_fc's architecture trained with Adam on random frames; returns a predict function."""
    model = build_model(dict(config.model.expression_controller), num_classes=config.data.num_expressions)
    key = jax.random.key(seed)
    variables = model.init(key, jnp.zeros((1,) + frames.shape[1:], jnp.float32), train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, x, y):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x.astype(jnp.float32) / 255, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        pick = rng.integers(0, len(frames), batch_size)
        params, stats, opt, _ = step(params, stats, opt, frames[pick], labels[pick])

    @jax.jit
    def predict(x):
        return jnp.argmax(model.apply({"params": params, "batch_stats": stats}, x.astype(jnp.float32) / 255,
                                      train=False), -1)

    def predict_all(x):
        return np.concatenate([np.asarray(predict(x[i:i + 256])) for i in range(0, len(x), 256)])
    return predict_all


def breakdown(predicted, expressions, phases) -> dict:
    correct = predicted == expressions
    out = {"all": float(correct.mean())}
    out.update({p: float(correct[phases == k].mean()) for k, p in enumerate(PHASES) if (phases == k).any()})
    out.update({e: float(correct[expressions == k].mean()) for k, e in enumerate(synthetic.EXPRESSIONS)})
    out["share_of_frames"] = {p: float((phases == k).mean()) for k, p in enumerate(PHASES)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic.py")
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE config override")
    parser.add_argument("--steps", type=int, default=None, help="default: train.pretrain_expression.steps")
    parser.add_argument("--within", action="store_true", help="also train within people (on `train` frames)")
    args = parser.parse_args()
    config = load_config(args.config, [f"--config.{o}" for o in args.override])
    spec = synthetic.spec_from_config(config)
    section = config.train.pretrain_expression
    steps = args.steps or section.steps
    start = time.perf_counter()
    val = frames_of(spec, "val")
    results = {"spec": str(spec), "steps": steps, "batch_size": section.batch_size}
    regimes = [("across people (wild -> val)", "wild")] + ([("within people (train -> val)", "train")]
                                                           if args.within else [])
    for name, split in regimes:
        frames, labels, _, _ = frames_of(spec, split)
        predict = train_classifier(config, frames, labels, steps=steps, batch_size=section.batch_size,
                                   lr=section.learning_rate, seed=config.seed)
        results[name] = {"train_frames": int(len(frames)),
                         "train_acc": float((predict(frames[:4096]) == labels[:4096]).mean()),
                         "val": breakdown(predict(val[0]), val[1], val[2])}
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
