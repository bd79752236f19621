"""Mesh, shardings and keys; the 8-device check runs in a subprocess because the device count is fixed at jax start."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from toy_training import fixed_batch

from ppfer_jax.parallel import DATA_AXIS, global_batch, make_mesh, process_rng, step_rng

REPO = Path(__file__).resolve().parents[1]


def test_the_default_mesh_puts_every_device_on_the_data_axis():
    assert dict(make_mesh().shape) == {DATA_AXIS: jax.device_count()}
    assert dict(make_mesh((DATA_AXIS, "model")).shape) == {DATA_AXIS: jax.device_count(), "model": 1}


def test_a_mesh_without_a_data_axis_is_rejected():
    with pytest.raises(ValueError, match="must include 'data'"):
        make_mesh(("model",))


def test_global_batch_keeps_values_and_splits_the_leading_axis():
    local = fixed_batch(size=4)
    batch = global_batch(local, make_mesh())
    np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec(DATA_AXIS)


def test_process_rng_folds_in_the_step_then_the_process():
    root = jax.random.key(7)
    expected = jax.random.fold_in(jax.random.fold_in(root, 5), jax.process_index())
    assert np.array_equal(jax.random.key_data(process_rng(root, 5)), jax.random.key_data(expected))
    assert np.array_equal(jax.random.key_data(step_rng(root, 5)), jax.random.key_data(jax.random.fold_in(root, 5)))
    assert not np.array_equal(jax.random.key_data(process_rng(root, 5)), jax.random.key_data(process_rng(root, 6)))


@pytest.mark.slow  # a subprocess on 8 CPU devices
def test_a_step_on_eight_devices_matches_one_device_and_really_shards_the_batch():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    completed = subprocess.run([sys.executable, str(REPO / "tests" / "toy_training.py")], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8 and report["batch_shards"] == 8 and report["single_shards"] == 1
    wide_loss, single_loss = report["loss"]
    assert abs(wide_loss - single_loss) <= 1e-5 * abs(single_loss)
    assert report["params_rel_diff"] <= 1e-5 and report["batch_stats_rel_diff"] <= 1e-5
    assert "global batch size 12 is not divisible by the 8 devices" in report["indivisible_error"]
