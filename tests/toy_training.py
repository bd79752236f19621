"""A tiny stage for testing the training core: a CNN with BatchNorm on fixed random images.

Run as a script (in a process started with 8 host devices) it compares one
step on an (8,) data mesh with the same step on one device, tries a batch
that 8 devices cannot split, and prints JSON.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppfer_jax.parallel import global_batch, make_mesh
from ppfer_jax.training import TrainState, compile_step

NUM_CLASSES = 4
IMAGE_SHAPE = (8, 8, 1)


class ToySource:
    """A grain random-access source: image, label and the example's own index (to trace which were read)."""

    def __init__(self, size: int = 64, seed: int = 0):
        generator = np.random.default_rng(seed)
        self.images = generator.normal(size=(size, *IMAGE_SHAPE)).astype(np.float32)
        self.labels = generator.integers(0, NUM_CLASSES, size=size).astype(np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index], "index": np.int32(index)}


class ToyCNN(nn.Module):
    @nn.compact
    def __call__(self, images, train: bool):
        x = nn.Conv(4, (3, 3), use_bias=False)(images)  # BatchNorm follows: a bias would get no gradient
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(NUM_CLASSES)(x)


MODEL = ToyCNN()
TX = optax.sgd(0.1, momentum=0.9)


def init_state(seed: int = 0) -> TrainState:
    variables = MODEL.init(jax.random.key(seed), jnp.zeros((1, *IMAGE_SHAPE)), train=False)
    return TrainState.create(params=variables["params"], tx=TX, batch_stats=variables["batch_stats"])


def train_step(state: TrainState, batch, rng):
    """CE on noisy images (the noise uses ``rng``); ``batch_signature`` fingerprints which examples came, in order."""
    images = batch["image"] + 0.05 * jax.random.normal(rng, batch["image"].shape)

    def loss_fn(params):
        logits, updates = MODEL.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    positions = jnp.arange(1, batch["index"].shape[0] + 1)
    metrics = {"loss": loss, "accuracy": (logits.argmax(-1) == batch["label"]).mean(),
               "batch_signature": (batch["index"] * positions).sum().astype(jnp.float32)}
    return state.apply_gradients(grads=grads, tx=TX, batch_stats=batch_stats), metrics


def fixed_batch(size: int = 16) -> dict[str, np.ndarray]:
    source = ToySource()
    return {name: np.stack([source[i][name] for i in range(size)]) for name in ("image", "label", "index")}


def one_step(mesh):
    """The first step from the fixed init on the fixed batch, and into how many shards the batch was split."""
    batch = global_batch(fixed_batch(), mesh)
    state, metrics = compile_step(train_step, mesh)(init_state(), batch, jax.random.key(0))
    return state, metrics, len(batch["image"].addressable_shards)


def largest_relative_difference(a, b) -> float:
    """Per leaf, the largest absolute difference relative to the leaf's largest magnitude."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def multi_device_report() -> dict:
    """One step on the all-device data mesh vs on one device, and the error for a batch it cannot split."""
    wide = make_mesh()
    single = jax.make_mesh((1,), ("data",), (jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    wide_state, wide_metrics, wide_shards = one_step(wide)
    single_state, single_metrics, single_shards = one_step(single)
    try:
        global_batch(fixed_batch(size=12), wide)
        indivisible_error = None
    except ValueError as error:
        indivisible_error = str(error)
    return {"devices": jax.device_count(), "batch_shards": wide_shards, "single_shards": single_shards,
            "indivisible_error": indivisible_error,
            "loss": [float(wide_metrics["loss"]), float(single_metrics["loss"])],
            "params_rel_diff": largest_relative_difference(wide_state.params, single_state.params),
            "batch_stats_rel_diff": largest_relative_difference(wide_state.batch_stats, single_state.batch_stats)}


if __name__ == "__main__":
    print(json.dumps(multi_device_report()))
