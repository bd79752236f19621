"""The whole config is checked before the first stage trains: one error naming each bad key, its value and what
is expected, for every kind of value a stage would trip over."""

import os
import subprocess
import sys

import pytest

from ppfer_jax import config_checks, pipeline
from ppfer_jax.config import load_config
from ppfer_jax.recipes import run

DEFAULT = "configs/synthetic.py"


def problems(*overrides, config=DEFAULT, **counts):
    return config_checks.problems_of(load_config(config, [f"--config.{o}" for o in overrides]), **counts)


@pytest.mark.parametrize("config", [DEFAULT, f"{DEFAULT}:tiny", "configs/cremad.py", "configs/cremad.py:224"])
def test_the_shipped_configs_pass(config):
    assert problems(config=config) == []


@pytest.mark.parametrize("override, key, expected", [
    ("train.privacy.steps=-3", "train.privacy.steps=-3", "a positive whole number of steps"),
    ("train.utility.steps=0", "train.utility.steps=0", "a positive whole number of steps"),
    ("train.utility.batch_size=0", "train.utility.batch_size=0", "a positive whole number of clips"),
    ("train.eval_batch_size=-8", "train.eval_batch_size=-8", "a positive whole number of clips"),
    ("train.privacy.learning_rate=-1e-4", "train.privacy.learning_rate=-0.0001", "a positive, finite"),
    ("train.compensation.learning_rate=0.0", "train.compensation.learning_rate=0.0", "a positive, finite"),
    ("train.privacy.eval_every=1000", "train.privacy.eval_every=1000", "None or 1 to steps=450"),
    ("train.utility.schedule=linear", "train.utility.schedule='linear'", "one of constant, cosine"),
    ("train.optimizer=lamb", "train.optimizer='lamb'", "one of adam, sgd"),
    ("train.augment.resized_crop_scale=(0.5,1.5)", "train.augment.resized_crop_scale=(0.5, 1.5)",
     "0 < low <= high <= 1"),
    ("baselines.blur.plr_tolerance=2.0", "baselines.blur.plr_tolerance=2.0", "a fraction between 0 and 1"),
    ("data.num_frames=1", "data.num_frames=1", "a clip length of at least 2 frames"),
    ("data.num_identities=1", "data.num_identities=1", "at least 2 people"),
])
def test_each_bad_value_is_named_with_what_is_expected(override, key, expected):
    found = problems(override)
    assert any(line.startswith(key + ":") and expected in line for line in found), found


@pytest.mark.parametrize("size, multiple", [(30, 8), (36, 8), (33, 8)])
def test_an_image_size_that_a_network_cannot_split_is_refused(size, multiple):
    """The code autoencoders halve their Haar band twice exactly (depth 2): frames must be a multiple of 8."""
    found = problems(f"data.image_size={size}")
    assert [line for line in found if line.startswith(f"data.image_size={size}:")] and \
        any(f"a multiple of {multiple}" in line and "robust_enhancer_low" in line for line in found), found
    assert problems("data.image_size=40") == []  # 40 = 5 x 8: every network can take it


def test_a_unet_too_deep_for_the_frame_is_refused():
    found = problems("data.image_size=16", "model.enhancer_low.depth=4")
    assert any(line.startswith("data.image_size=16: expected at least 32 px") and "enhancer_low" in line
               for line in found), found


def test_clip_length_bounds_the_frames_each_step_reads():
    found = problems("data.num_frames=3")  # ppfer_robust reads 4 random frames of each clip
    assert any(line.startswith("privacy.robust.frames_per_clip=4: expected 1 to data.num_frames=3") for line in found)


def test_batches_must_split_evenly_over_the_devices_and_processes():
    assert problems(device_count=4) == []  # every default batch is a multiple of 4
    found = problems(device_count=8)
    assert "train.robust_privacy.batch_size=36: expected a multiple of 8: the global batch is split over 8 batch " \
           "device(s) and 1 process(es)" in found
    found = problems(device_count=2, process_count=3)  # 3 processes: each global batch a multiple of 6
    assert any(line.startswith("train.utility.batch_size=16: expected a multiple of 6") for line in found)
    run_sections = tuple({stage.train_key for stage in run.STAGES})  # what `run` trains: no reproduce-only row
    found = problems(device_count=8, stages=run_sections)
    assert found == ["train.robust_privacy.batch_size=36: expected a multiple of 8: the global batch is split over "
                     "8 batch device(s) and 1 process(es)"]
    found = problems("mesh.fsdp=3", device_count=8)
    assert any(line.startswith("mesh.fsdp=3: expected a divisor of the 8 devices") for line in found)


def test_the_method_needs_identity_labels():
    found = problems(config="configs/dfew.py")
    assert any(line.startswith("data.num_identities=0: expected at least 2 people") for line in found)


def test_every_problem_is_in_one_error_and_nothing_is_written(tmp_path):
    config = load_config(DEFAULT, ["--config.train.privacy.steps=-3", "--config.train.utility.batch_size=0"])
    with pytest.raises(ValueError) as error:
        pipeline.run(config, tmp_path / "workdir")
    assert "2 values cannot run" in str(error.value) and "train.privacy.steps=-3" in str(error.value)
    assert not (tmp_path / "workdir").exists()


def test_the_command_line_refuses_a_bad_value_before_training(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ppfer_jax.cli", "run", "--workdir", str(tmp_path / "w"),
                           "--config.train.privacy.steps=-3"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 2, done.stderr
    assert "train.privacy.steps=-3: expected a positive whole number of steps" in done.stderr
    assert not (tmp_path / "w").exists()
