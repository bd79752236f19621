"""Where a stage's time goes (``ppfer_jax/timing.py``): exclusive times by kind that add up to the wall time, and
every XLA compile booked apart with its name and whether the persistent cache had it."""

import time

import jax
import jax.numpy as jnp
import pytest

from ppfer_jax import timing


def test_nested_blocks_book_exclusive_times_that_add_up_to_the_wall_time():
    timing.install()
    mark = timing.snapshot()
    start = time.perf_counter()
    with timing.charged("steps"):
        time.sleep(0.05)
        with timing.charged("evaluate"):
            time.sleep(0.1)
            with timing.charged("data"):
                time.sleep(0.05)
    wall = time.perf_counter() - start
    seconds = timing.since(mark)["seconds"]
    assert seconds["evaluate"] == pytest.approx(0.1, abs=0.03)
    assert seconds["data"] == pytest.approx(0.05, abs=0.03)
    assert seconds["steps"] == pytest.approx(0.05, abs=0.03)
    assert sum(seconds.values()) == pytest.approx(wall, abs=0.01)


def test_a_compile_is_booked_to_compile_and_taken_off_the_block_it_happened_in():
    timing.install()

    def never_seen_before(x):  # a new function: jax has not compiled it in this process
        return jnp.sin(x) * 3.0 + jnp.cos(x)

    mark = timing.snapshot()
    with timing.charged("steps"):
        jax.jit(never_seen_before)(jnp.ones(17)).block_until_ready()
    record = timing.since(mark)
    names = [c["name"] for c in record["compiles"]]
    assert "jit(never_seen_before)" in names
    assert record["seconds"]["compile"] == pytest.approx(sum(c["seconds"] for c in record["compiles"]), abs=0.01)
    assert record["seconds"]["compile"] > 0 and record["seconds"].get("steps", 0.0) >= -0.01
