"""Device mesh, shardings, multi-host start and per-step randomness.

Every stage runs the same way on one CPU, one GPU or a pod: the batch is split
along its leading axis over the mesh's 'data' and 'fsdp' axes; parameters and
optimizer state are replicated, or split along 'fsdp' (FSDP / ZeRO-3) by a
small rule list (regex on the parameter's path -> 'fsdp' | 'replicate', as in
big_vision); ``jax.jit`` with explicit shardings does the rest (no ``pmap``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def make_mesh(axis_names: Sequence[str] = (DATA_AXIS,), shape: Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all); by default every device sits on the first axis.

    Axes are ``Auto`` so models need no sharding annotations: jit's in/out
    shardings decide the layout (``jax.make_mesh`` defaults to ``Explicit``).
    """
    axis_names = tuple(axis_names)
    count = jax.device_count() if devices is None else len(devices)
    if shape is None:
        shape = (count,) + (1,) * (len(axis_names) - 1)
    shape = tuple(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {shape} and axis names {axis_names} differ in length")
    if DATA_AXIS not in axis_names:
        raise ValueError(f"mesh axis names {axis_names} must include {DATA_AXIS!r}: batches are split over it")
    if math.prod(shape) != count:
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices; there are {count}")
    return jax.make_mesh(shape, axis_names, axis_types=(AxisType.Auto,) * len(axis_names), devices=devices)


def mesh_from_config(config) -> Mesh:
    """The (data, fsdp) mesh of ``config.mesh``: ``fsdp`` devices per parameter shard group, ``data`` = -1
    takes the rest."""
    count, fsdp = jax.device_count(), config.mesh.fsdp
    data = config.mesh.data if config.mesh.data != -1 else count // max(fsdp, 1)
    if fsdp < 1 or data < 1 or data * fsdp != count:
        raise ValueError(f"config mesh: data={config.mesh.data} x fsdp={fsdp} must use all {count} devices "
                         f"(data=-1 takes what fsdp leaves; fsdp must divide {count})")
    return make_mesh((DATA_AXIS, FSDP_AXIS), (data, fsdp))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch is split over: 'data', and 'fsdp' when the mesh has it."""
    return tuple(axis for axis in (DATA_AXIS, FSDP_AXIS) if axis in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) axis over the batch axes; other axes are whole."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def process_batch_size(global_size: int, mesh: Mesh, name: str) -> int:
    """This process's share of a configured global batch, which every batch device must get equally."""
    devices = math.prod(mesh.shape[axis] for axis in batch_axes(mesh))
    if global_size % devices or global_size % jax.process_count():
        raise ValueError(f"config {name}={global_size}: the global batch must be a multiple of the {devices} devices "
                         f"of the {' x '.join(batch_axes(mesh))} mesh axes ({jax.process_count()} processes)")
    return global_size // jax.process_count()


def fsdp_spec(shape: Sequence[int], mesh: Mesh, min_size: int) -> PartitionSpec:
    """Splits an array's largest axis that the 'fsdp' axis divides; small or indivisible arrays stay whole."""
    size = mesh.shape.get(FSDP_AXIS, 1)
    if size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [axis for axis in np.argsort(shape, kind="stable")[::-1] if shape[axis] % size == 0]
    if not candidates:
        return PartitionSpec()
    spec = [None] * len(shape)
    spec[int(candidates[0])] = FSDP_AXIS
    return PartitionSpec(*spec)


def path_name(path) -> str:
    """A pytree key path as 'a/b/c' (dict keys, attribute names, list indices): what sharding rules match."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return "/".join(parts)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, str]], min_size: int = 2**14) -> Any:
    """A NamedSharding for every array of ``tree`` (e.g. an abstract TrainState): the first rule whose regex
    matches the leaf's path (``path_name``) decides: 'fsdp' (``fsdp_spec``) or 'replicate'; no match
    replicates. Optimizer moments share their parameter's path suffix, so one rule covers both."""
    def sharding(path, leaf):
        name = path_name(path)
        for pattern, action in rules:
            if re.fullmatch(pattern, name):
                if action == "fsdp":
                    return NamedSharding(mesh, fsdp_spec(np.shape(leaf), mesh, min_size))
                if action == "replicate":
                    break
                raise ValueError(f"config sharding.rules: action {action!r} for {pattern!r}; expected 'fsdp' or "
                                 f"'replicate'")
        return NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map_with_path(sharding, tree)


def initialize_distributed(config) -> None:
    """Joins the processes of a multi-host run (``config.distributed``), before anything touches a device.

    ``enabled=True`` with no address lets jax detect the cluster (TPU pods, SLURM, ...); otherwise the
    coordinator address, process count and id are passed as given.
    """
    settings = config.get("distributed")
    if not settings or not settings.enabled:
        return
    given = {key: settings[key] for key in ("coordinator_address", "num_processes", "process_id")
             if settings.get(key) is not None}
    jax.distributed.initialize(**given)


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (the default for train states and keys)."""
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's numpy batch into global arrays sharded over 'data'.

    Each process passes its own slice (from its data shard); the global batch
    is their concatenation along the leading axis.
    """
    sharding = batch_sharding(mesh)
    data_devices = math.prod(mesh.shape[axis] for axis in batch_axes(mesh))
    global_arrays = {}
    for name, local in local_batch.items():
        local = np.asarray(local)
        if local.ndim == 0:
            raise ValueError(f"batch field {name!r} is a scalar; every field needs a leading batch axis")
        global_size = local.shape[0] * jax.process_count()
        if global_size % data_devices:
            raise ValueError(
                f"batch field {name!r}: global batch size {global_size} is not divisible by the "
                f"{data_devices} devices on the {' x '.join(batch_axes(mesh))} mesh axes")
        global_arrays[name] = jax.make_array_from_process_local_data(sharding, local)
    return global_arrays


def step_rng(root_key: jax.Array, step: int) -> jax.Array:
    """The key a jitted step gets: equal on every process, as a replicated input must be.

    Per-example randomness inside the step stays independent of the device
    count because jax's threefry is partitionable (``jax_threefry_partitionable``).
    """
    return jax.random.fold_in(root_key, step)


def process_rng(root_key: jax.Array, step: int) -> jax.Array:
    """A key for host-side work that must differ between processes (e.g. per-host sampling)."""
    return jax.random.fold_in(step_rng(root_key, step), jax.process_index())


def use_compilation_cache() -> None:
    """XLA's persistent compilation cache, in ``$JAX_COMPILATION_CACHE_DIR`` or ``~/.cache/ppfer-jax/xla``: the
    stages of a run and the rows of ``reproduce`` compile the same steps again and again (every row trains
    another F_u of one shape), and a later call starts warm. Results are the same as with a fresh compile."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ppfer-jax" / "xla"
        jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
