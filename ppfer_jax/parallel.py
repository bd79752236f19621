"""Device mesh, shardings and per-step randomness for data-parallel training.

Every stage runs the same way on one CPU, one GPU or a pod: the state is
replicated, the batch is split along the leading axis over the mesh's 'data'
axis, and ``jax.jit`` with explicit shardings does the rest (no ``pmap``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(axis_names: Sequence[str] = (DATA_AXIS,), shape: Sequence[int] | None = None) -> Mesh:
    """A mesh over all devices; by default every device sits on the first axis.

    Axes are ``Auto`` so models need no sharding annotations: jit's in/out
    shardings decide the layout (``jax.make_mesh`` defaults to ``Explicit``).
    """
    axis_names = tuple(axis_names)
    if shape is None:
        shape = (jax.device_count(),) + (1,) * (len(axis_names) - 1)
    shape = tuple(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {shape} and axis names {axis_names} differ in length")
    if DATA_AXIS not in axis_names:
        raise ValueError(f"mesh axis names {axis_names} must include {DATA_AXIS!r}: batches are split over it")
    return jax.make_mesh(shape, axis_names, axis_types=(AxisType.Auto,) * len(axis_names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) axis over the 'data' axis; other axes are whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (the default for train states and keys)."""
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's numpy batch into global arrays sharded over 'data'.

    Each process passes its own slice (from its data shard); the global batch
    is their concatenation along the leading axis.
    """
    sharding = batch_sharding(mesh)
    data_devices = mesh.shape[DATA_AXIS]
    global_arrays = {}
    for name, local in local_batch.items():
        local = np.asarray(local)
        if local.ndim == 0:
            raise ValueError(f"batch field {name!r} is a scalar; every field needs a leading batch axis")
        global_size = local.shape[0] * jax.process_count()
        if global_size % data_devices:
            raise ValueError(
                f"batch field {name!r}: global batch size {global_size} is not divisible by the "
                f"{data_devices} devices on the {DATA_AXIS!r} mesh axis")
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
