"""The open-set method's row: its loss against hand-computed values, its frame pairs, and that it trains with the
task's identity labels taken away."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.sources import ArraySource
from ppfer_jax import context, reproduce
from ppfer_jax.baselines import open_set
from ppfer_jax.config import load_config
from ppfer_jax.parallel import mesh_from_config
from ppfer_jax.recipes import run
from ppfer_jax.stage import train_stage

from conftest import TINY


def test_indistinguishability_is_the_kl_to_uniform_over_same_expression_clips():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    second /= np.linalg.norm(second, axis=1, keepdims=True)
    expression = np.array([0, 0, 1, 0, 1])
    kl, found = open_set.indistinguishability(jnp.asarray(first), jnp.asarray(second), jnp.asarray(expression), 0.5)
    expected_kl, expected_found = [], []
    for i in range(5):
        same = np.flatnonzero(expression == expression[i])  # its own clip among them
        logits = first[i] @ second[same].T / 0.5
        log_p = logits - np.log(np.exp(logits).sum())
        expected_kl.append(-np.log(len(same)) - log_p.mean())
        expected_found.append(same[np.argmax(logits)] == i)
    assert float(kl) == pytest.approx(np.mean(expected_kl), rel=1e-5)
    assert float(found) == pytest.approx(np.mean(expected_found))
    # every frame embedded alike: nothing tells a clip's own frame from the others
    same = jnp.ones((5, 4)) / 2.0
    assert float(open_set.indistinguishability(same, same, jnp.asarray(expression), 0.5)[0]) == pytest.approx(
        0.0, abs=1e-6)


def test_the_two_frames_of_a_clip_are_different_frames():
    video = jnp.broadcast_to(jnp.arange(5, dtype=jnp.float32)[None, :, None, None, None], (64, 5, 2, 2, 3))
    for seed in range(5):
        pair = np.asarray(open_set.two_frames(jax.random.key(seed), video))[:, :, 0, 0, 0]
        assert np.all(pair[:, 0] != pair[:, 1])
        assert set(pair.ravel()) == set(range(5))


def test_the_method_trains_with_no_identity_label_of_the_task(tiny_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir)  # C_fc, trained on the wild clips' expressions, is upstream
    config = load_config(TINY)
    load_split = context.load_split

    def without_identity(config, split):  # train, val and test as a user with no identity labels holds them
        source = load_split(config, split)
        if split == "wild":
            return source
        return ArraySource({k: v for k, v in source.arrays.items() if k != "identity"})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context, "load_split", without_identity)
        ctx = run.context(config, workdir, mesh_from_config(config), more_makers=reproduce.MAKERS)
        ctx.add_stages(open_set.STAGES)
        for stage in open_set.STAGES:
            summary = train_stage(ctx, stage)
            assert summary["step"] == config.train[stage.train_key].steps
        clips = open_set.anonymised_clips(ctx, "train", "open_set_priors")
    assert clips.arrays["video"].shape == load_split(config, "train").arrays["video"].shape
    assert "identity" not in clips.arrays
