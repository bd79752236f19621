"""The adversarial CNN row (Narula et al.): its rounds update the right networks in each phase."""

import jax
import numpy as np
import pytest

from ppfer_jax.baselines import narula
from ppfer_jax.config import load_config
from ppfer_jax.nets import Nets
from ppfer_jax.stage import shape_state, stage_optimizer

from conftest import TINY


def _config(phase_steps=(2, 2, 2), steps=12):
    config = load_config(TINY)
    config.baselines.narula.phase_steps = phase_steps
    config.train.narula.steps = steps
    return config


def test_the_phases_follow_the_round_schedule():
    config = _config(phase_steps=(2, 3, 1), steps=12)
    phases = [int(narula.phase_of(config, step)) for step in range(12)]
    assert phases == [0, 0, 1, 1, 1, 2] * 2
    narula.check_schedule(config)
    with pytest.raises(ValueError, match="phase_steps"):
        narula.check_schedule(_config(phase_steps=(2, 3, 1), steps=10))


def _changed(before, after, name) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.params[name]),
                                                         jax.tree.leaves(after.params[name])))


@pytest.mark.slow  # compiles the three phases' steps (about 45 s)
def test_each_phase_trains_only_its_networks_and_the_identity_classifier_restarts():
    config = _config(phase_steps=(1, 2, 1), steps=8)
    nets = Nets(config)
    state = jax.jit(shape_state(nets, narula.STAGE))()
    phased = narula.STAGE.step(nets, config, stage_optimizer(config, narula.STAGE))
    compiled = [jax.jit(fn) for fn in phased.steps]
    step = lambda state, *args: compiled[phased.phase(int(state.step))](state, *args)  # noqa: E731
    rng = np.random.default_rng(0)
    batch = {"video": rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8),
             "identity": np.array([0, 3]), "expression": np.array([1, 5])}
    trains = {0: {"narula_t", "narula_emotion"}, 1: {"narula_identity"}, 2: {"narula_t"}}
    for k in range(8):
        new, logs = step(state, batch, jax.random.key(k))
        phase = narula.phase_of(config, k)
        assert int(logs["phase"]) == phase == phased.phase(k)
        changed = {name for name in narula.STAGE.trains if _changed(state, new, name)}
        assert changed == trains[phase], (k, changed)
        if phase == 1:  # at the first step of (b) the classifier restarts: what it held before does not matter
            other = state.replace(params={**state.params, "narula_identity": jax.tree.map(
                lambda x: x * 2.0 + 0.1, state.params["narula_identity"])})
            same = not _changed(new, step(other, batch, jax.random.key(k))[0], "narula_identity")
            assert same == (k % 4 == 1), k
        state = new
