"""One process of a two-process run: ``python tests/multiprocess_stage.py PROCESS_ID PORT WORKDIR``.

Each process has 2 host devices; together they form a (2, 2) data x fsdp mesh, train pretrain/identity
for a few steps (checkpointing), and process 0 writes the final parameters, gathered from both processes,
to WORKDIR/params.npz for the test to compare with a single-process restore.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.experimental.multihost_utils import process_allgather

from ppfer_jax.config import load_config
from ppfer_jax.recipes import run
from ppfer_jax.stage import train_stage
from ppfer_jax.parallel import initialize_distributed, mesh_from_config, path_name

STAGE = "pretrain/identity"
OVERRIDES = ["train.pretrain_identity.steps=4", "train.log_every=2", "train.checkpoint_every=2",
             "sharding.min_size=64", "mesh.fsdp=2"]


def main(process_id: int, port: int, workdir: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    config = load_config("configs/synthetic.py:tiny", [
        *OVERRIDES, "distributed.enabled=True", f"distributed.coordinator_address=127.0.0.1:{port}",
        "distributed.num_processes=2", f"distributed.process_id={process_id}"])
    initialize_distributed(config)
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    ctx = run.context(config, workdir, mesh_from_config(config))
    train_stage(ctx, run.STAGE_BY_NAME[STAGE])
    params = process_allgather(ctx.load(STAGE).params, tiled=True)
    if process_id == 0:
        leaves = jax.tree_util.tree_leaves_with_path(params)
        np.savez(f"{workdir}/params.npz", **{path_name(path): np.asarray(leaf) for path, leaf in leaves})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
