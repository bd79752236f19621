"""Scale-out: stage steps on data and data x fsdp meshes, FSDP rules, two processes, re-meshed restore, bf16.

The multi-device checks run in subprocesses, because the device count is fixed when jax starts.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ppfer_jax.config import load_config
from data_pipelines.sources import load_split
from ppfer_jax.recipes import ppfer, run
from ppfer_jax.stage import shape_state, stage_optimizer
from ppfer_jax.parallel import (FSDP_AXIS, fsdp_spec, make_mesh, mesh_from_config, path_name, process_batch_size,
                                tree_shardings)

REPO = Path(__file__).resolve().parents[1]
P = jax.sharding.PartitionSpec
CHAINED_STAGES = ("s1/privacy", "s2/compensation", "s3/utility")  # U-Nets, ResNets, U-ViT, R3D between them


def run_script(args, devices, timeout=900):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def check_stage_reports(stdout, stages):
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [r["stage"] for r in reports] == list(stages)
    for report in reports:
        single = report["losses"]["one"]
        for mesh in ("data8", "data4_fsdp2"):
            np.testing.assert_allclose(report["losses"][mesh], single, rtol=1e-5, err_msg=report["stage"])
            assert report["params_rel_diff"][mesh] <= 1e-5, report
        assert report["fsdp_split"], f"{report['stage']}: no parameter is split over fsdp"
        for name, shape, shard in report["fsdp_split"]:
            halved = [axis for axis, (a, b) in enumerate(zip(shape, shard)) if a != b]
            assert len(halved) == 1 and shard[halved[0]] * 2 == shape[halved[0]], (name, shape, shard)


@pytest.mark.slow  # subprocesses on 8 CPU devices
def test_chained_stage_steps_match_one_device_on_data_and_fsdp_meshes():
    completed = run_script([str(REPO / "tests" / "stage_sharding.py"), "compare", *CHAINED_STAGES], devices=8)
    assert completed.returncode == 0, completed.stderr[-3000:]
    check_stage_reports(completed.stdout, CHAINED_STAGES)


@pytest.mark.slow
@pytest.mark.exhaustive
def test_every_stage_step_matches_one_device_on_data_and_fsdp_meshes():
    names = [stage.name for stage in ppfer.STAGES]
    completed = run_script([str(REPO / "tests" / "stage_sharding.py"), "compare", *names], devices=8)
    assert completed.returncode == 0, completed.stderr[-3000:]
    check_stage_reports(completed.stdout, names)


@pytest.mark.slow  # subprocesses on 8 CPU devices
def test_a_stage_stopped_on_eight_devices_resumes_on_four():
    completed = run_script([str(REPO / "tests" / "stage_sharding.py"), "resume"], devices=8)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    # checkpoint at 2, stopped at 3 on the (4, 2) mesh; resumed from 2 on (2, 2): steps 4 and 6 logged anew
    assert report == {"summary_steps": 6, "logged_steps": [2, 4, 6], "devices": 4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # subprocesses on 8 CPU devices
def test_two_processes_train_together_and_the_checkpoint_restores_on_one_device(tmp_path):
    port, script = free_port(), str(REPO / "tests" / "multiprocess_stage.py")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, script, str(i), str(port), str(tmp_path)], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    saved = np.load(tmp_path / "params.npz")
    sys.path.insert(0, str(REPO / "tests"))
    from multiprocess_stage import OVERRIDES, STAGE

    config = load_config("configs/synthetic.py:tiny", OVERRIDES)
    restored = run.context(config, tmp_path, make_mesh()).load(STAGE)
    leaves = jax.tree_util.tree_leaves_with_path(restored.params)
    assert sorted(path_name(path) for path, _ in leaves) == sorted(saved.files)
    for path, leaf in leaves:
        np.testing.assert_array_equal(np.asarray(leaf), saved[path_name(path)])
    assert int(restored.step) == 4
    assert len(saved.files) > 0 and (tmp_path / STAGE / "DONE.json").exists()


# ------------------------------------------------------------------------------------------------------------
# Rules, meshes, batch sizes (one process)


def fake_mesh(fsdp):
    """An abstract (data, fsdp) mesh: enough for specs, no devices needed."""
    return jax.sharding.AbstractMesh((2, fsdp), ("data", FSDP_AXIS))


def test_fsdp_spec_splits_the_largest_divisible_axis_and_leaves_small_or_odd_arrays_whole():
    mesh = fake_mesh(4)
    assert fsdp_spec((3, 3, 64, 128), mesh, min_size=1) == P(None, None, None, FSDP_AXIS)
    assert fsdp_spec((3, 3, 64, 126), mesh, min_size=1) == P(None, None, FSDP_AXIS, None)  # 126 % 4 != 0
    assert fsdp_spec((3, 5, 7), mesh, min_size=1) == P()  # nothing divisible
    assert fsdp_spec((64, 128), mesh, min_size=2**14) == P()  # 8192 elements: below min_size
    assert fsdp_spec((), mesh, min_size=0) == P()
    assert fsdp_spec((64, 128), fake_mesh(1), min_size=1) == P()  # no fsdp axis to split over


def test_sharding_rules_first_match_wins_and_optimizer_moments_follow_their_parameter():
    mesh = fake_mesh(2)
    tree = {"params": {"f_u": {"head": {"kernel": jnp.zeros((64, 8))}, "conv": {"kernel": jnp.zeros((3, 64, 8))}}},
            "opt_state": [{"mu": {"f_u": {"head": {"kernel": jnp.zeros((64, 8))}}}}]}
    shardings = tree_shardings(tree, mesh, [(".*/head/.*", "replicate"), (".*", "fsdp")], min_size=1)
    assert shardings["params"]["f_u"]["head"]["kernel"].spec == P()
    assert shardings["params"]["f_u"]["conv"]["kernel"].spec == P(None, FSDP_AXIS, None)
    assert shardings["opt_state"][0]["mu"]["f_u"]["head"]["kernel"].spec == P()
    assert path_name(jax.tree_util.tree_leaves_with_path(tree["opt_state"])[0][0]) == "0/mu/f_u/head/kernel"
    with pytest.raises(ValueError, match="action 'shard' for '.*'; expected 'fsdp' or 'replicate'"):
        tree_shardings(tree, mesh, [(".*", "shard")])


def test_mesh_and_global_batch_errors_name_the_config_key():
    config = ml_collections.ConfigDict({"mesh": {"data": -1, "fsdp": 2}})
    with pytest.raises(ValueError, match=r"config mesh: data=-1 x fsdp=2 must use all 1 devices"):
        mesh_from_config(config)
    config.mesh.fsdp = 1
    assert dict(mesh_from_config(config).shape) == {"data": jax.device_count(), FSDP_AXIS: 1}
    assert process_batch_size(8, make_mesh(), "train.utility.batch_size") == 8
    with pytest.raises(ValueError, match=r"train.utility.batch_size=6: the global batch must be a multiple of the 4"):
        process_batch_size(6, jax.sharding.AbstractMesh((4,), ("data",)), "train.utility.batch_size")


@pytest.mark.slow  # trains a stage
def test_bf16_compute_trains_and_keeps_float32_params():
    config = load_config("configs/synthetic.py:tiny", ["dtype=bfloat16"])
    stage = run.STAGE_BY_NAME["pretrain/identity"]
    ctx = run.context(config, "/nonexistent", make_mesh())
    state = jax.jit(shape_state(ctx.nets, stage))()
    tx = stage_optimizer(config, stage)
    step = jax.jit(stage.step(ctx.nets, config, tx))
    source = load_split(config, "train")
    batch = {k: jnp.asarray(np.stack([source[i][k] for i in range(16)])) for k in ("video", "identity")}
    logits = ctx.nets.modules["v_pl"].apply({"params": state.params["v_pl"], "batch_stats": state.batch_stats["v_pl"]},
                                            jnp.zeros((1, 32, 32, 3)), train=False, capture_intermediates=True,
                                            mutable=["intermediates"])[1]["intermediates"]
    conv_out = logits["stem_conv"]["__call__"][0]
    assert conv_out.dtype == jnp.bfloat16  # the compute really runs in bf16
    losses = []
    for k in range(8):
        state, metrics = step(state, batch, jax.random.key(k, impl=config.rng_impl))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim)
