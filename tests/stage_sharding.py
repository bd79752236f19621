"""Each PPFER stage's train step on an (8,) data mesh and a (4, 2) data x fsdp mesh against one device.

Run as a script in a process started with 8 host devices (``test_sharding.py`` does):
``compare STAGE...`` takes, for each named stage, two steps from the same fresh state on the same batches and prints one JSON report per stage. A
second mode (``resume``) runs a stage on 8 devices, stops it, and resumes it on a 4-device mesh.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax
import numpy as np

from data_pipelines.loader import make_iterator
from ppfer_jax.config import load_config
from data_pipelines.sources import load_split
from ppfer_jax.recipes import run
from ppfer_jax.stage import shape_state, stage_key, stage_optimizer, state_sharding, train_stage
from ppfer_jax.parallel import FSDP_AXIS, global_batch, make_mesh
from ppfer_jax.training import compile_step

STEPS, BATCH = 2, 8
# SGD: Adam's first steps move every weight by about lr * sign(gradient), which turns float rounding in a
# near-zero gradient into a full-size difference; SGD keeps the comparison about the sharding.
OVERRIDES = ["sharding.min_size=64", "train.log_every=2", "train.checkpoint_every=2", "train.optimizer=sgd"]


def meshes() -> dict:
    devices = jax.devices()
    return {"one": make_mesh(("data", FSDP_AXIS), (1, 1), devices[:1]),
            "data8": make_mesh(("data", FSDP_AXIS), (8, 1)),
            "data4_fsdp2": make_mesh(("data", FSDP_AXIS), (4, 2))}


def run_steps(config, stage, mesh, workdir):
    """Two steps of ``stage`` from its fresh state (fresh frozen nets too) on the first two batches."""
    ctx = run.context(config, workdir, mesh)
    sharding = state_sharding(ctx.nets, ctx.mesh, stage)
    state = jax.jit(shape_state(ctx.nets, stage), out_shardings=sharding)()
    tx = stage_optimizer(config, stage)
    step = compile_step(stage.step(ctx.nets, config, tx), mesh, sharding)
    data = make_iterator(load_split(config, stage.split), batch_size=BATCH, seed=0, shard_index=0,
                         shard_count=1)
    losses = []
    for k in range(STEPS):
        state, metrics = step(state, global_batch(next(data), mesh), jax.random.fold_in(stage_key(config,
                                                                                                       stage.name), k))
        losses.append(float(metrics["loss"]))
    return state, losses


def largest_relative_difference(a: dict, b: dict) -> float:
    """Over the trained networks: ||a - b|| / ||b|| of all the network's parameters together (L2). Per leaf
    it would measure reduction-order noise relative to zero-initialised biases after two tiny updates."""
    def norm(tree):
        return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))
    return max(norm(jax.tree.map(lambda x, y: np.asarray(x) - np.asarray(y), a[name], b[name])) / norm(b[name])
               for name in b)


def split_leaves(state) -> list:
    """(path, global shape, shard shape) of every parameter split over the fsdp axis."""
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        if FSDP_AXIS in tuple(leaf.sharding.spec):
            out.append((jax.tree_util.keystr(path), list(leaf.shape), list(leaf.addressable_shards[0].data.shape)))
    return out


def compare_stages(names: list[str]) -> None:
    config = load_config("configs/synthetic.py:tiny", OVERRIDES)
    with tempfile.TemporaryDirectory() as workdir:
        for stage in (run.STAGE_BY_NAME[name] for name in names):
            states = {name: run_steps(config, stage, mesh, workdir) for name, mesh in meshes().items()}
            single, single_losses = states["one"]
            report = {"stage": stage.name, "losses": {name: losses for name, (_, losses) in states.items()},
                      "params_rel_diff": {name: largest_relative_difference(state.params, single.params)
                                          for name, (state, _) in states.items() if name != "one"},
                      "fsdp_split": split_leaves(states["data4_fsdp2"][0])}
            print(json.dumps(report), flush=True)


def resume_on_fewer_devices() -> None:
    """A stage stopped on 8 devices (checkpoint at step 2) resumes on a (4,) mesh and finishes."""
    config = load_config("configs/synthetic.py:tiny", [*OVERRIDES, "train.pretrain_enhancer.steps=6",
                                                        "train.pretrain_enhancer.batch_size=8"])
    stage = run.STAGE_BY_NAME["pretrain/enhancer"]
    with tempfile.TemporaryDirectory() as workdir:
        train_stage(run.context(config, workdir, make_mesh(("data", FSDP_AXIS), (4, 2))), stage, stop_after=3)
        four = make_mesh(("data", FSDP_AXIS), (2, 2), jax.devices()[:4])
        summary = train_stage(run.context(config, workdir, four), stage)
        with open(f"{workdir}/{stage.name}/metrics.jsonl") as records:
            steps = [json.loads(line)["step"] for line in records if '"train"' in line]
        state = run.context(config, workdir, four).load(stage.name)
        print(json.dumps({"summary_steps": summary["num_steps"], "logged_steps": steps,
                          "devices": len(jax.tree.leaves(state.params)[0].sharding.device_set)}))


if __name__ == "__main__":
    jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "ppfer_jax_xla_cache"))
    if sys.argv[1] == "compare":
        compare_stages(sys.argv[2:])
    else:
        resume_on_fewer_devices()
