"""Pieces shared by the config files."""

import ml_collections


def stage(steps: int, batch_size: int, learning_rate: float, eval_every: int | None = None,
          schedule: str = "constant") -> ml_collections.ConfigDict:
    """One training stage's schedule. ``batch_size`` is global: split over every process and batch device.
    ``schedule``: "constant", or "cosine" (linear warm-up over a tenth of
    the steps, then cosine decay to 0). ``eval_every``: evaluate and select the best checkpoint this often
    (stages that select one)."""
    return ml_collections.ConfigDict(dict(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                                          eval_every=eval_every, schedule=schedule))


def parallelism(fsdp: int = 1) -> dict[str, ml_collections.ConfigDict]:
    """Mesh, parameter-sharding rules and multi-host start (``ppfer_jax/parallel.py``).

    ``mesh``: data x fsdp devices (data=-1: all that fsdp leaves); batches split over both axes.
    ``sharding.rules``: (regex on a state leaf's path such as ``params/f_u/stage1_block0/conv1/kernel`` or
    ``opt_state/0/mu/f_u/...``, 'fsdp' | 'replicate'); the first match wins, no match replicates; 'fsdp' splits
    the leaf's largest axis that the fsdp axis divides, for leaves of at least ``min_size`` elements.
    ``distributed``: ``enabled=True`` calls ``jax.distributed.initialize`` (cluster auto-detected on TPU pods
    and SLURM when the address is None).
    """
    return dict(
        mesh=ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp)),
        sharding=ml_collections.ConfigDict(dict(rules=[(".*", "fsdp")], min_size=2**14)),
        distributed=ml_collections.ConfigDict(dict(enabled=False, coordinator_address=None, num_processes=None,
                                                   process_id=None)),
    )
