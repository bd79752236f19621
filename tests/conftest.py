"""Shared test setup: CPU only, a persistent XLA compile cache, absl flags parsed for grain workers, and one
finished tiny run (with its exported bundle) for the tests that need trained networks. Tests that need that run
are marked ``slow``: ``pytest -m "not slow"`` is the fast tier."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("PPFER_JAX_JOBS", "1")  # the test workers use the cores; a test that wants helpers says so

import jax  # noqa: E402  (after the platform is pinned)
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Compiling dominates this suite on a 2-core CPU; the cache makes repeated runs several times faster.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "ppfer_jax_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

flags.FLAGS.mark_as_parsed()

TINY = "configs/synthetic.py:tiny"


SLOW_FIXTURES = {"tiny_run", "tiny_run_and_reads", "tiny_bundle"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups (conftests register first)
def pytest_collection_modifyitems(items):
    """Marks the tests on the tiny run ``slow``, and groups tests for pytest-xdist's ``loadgroup``: those on the
    tiny run on one worker (it is built once per worker that needs it), every other module's on one worker (its
    module-scoped fixtures too)."""
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("tiny_run"))
        else:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Stops the run where pytest-xdist does not apply the groups (on pytest 9.2, pytest-xdist#1386): it would
    spread the tiny-run tests over both workers, build that run on each and rebuild module fixtures."""
    if node.config.getoption("dist") == "loadgroup" and ids and not any("@" in nodeid for nodeid in ids):
        raise pytest.UsageError(f"pytest-xdist did not apply the tests' xdist_group marks (pytest-xdist#1386, "
                                f"pytest {pytest.__version__}): install pytest<9.2 (pyproject.toml pins it)")


@pytest.fixture(scope="session")
def tiny_run_and_reads(tmp_path_factory):
    """One finished ``ppfer-jax run`` of the tiny config (a few minutes), shared by the session: its workdir, its
    report, and which data split each stage read (the evaluation is stage None). Every read of a data split goes
    through ``context.load_split`` (``test_layout`` checks that nothing else in the package imports it)."""
    from ppfer_jax import context, pipeline
    from ppfer_jax.config import load_config

    workdir = tmp_path_factory.mktemp("tiny_run")
    reads, current = [], [None]
    load_split, train_stage = context.load_split, pipeline.train_stage

    def recording_load_split(config, split):
        reads.append((current[0], split))
        return load_split(config, split)

    def recording_train_stage(ctx, stage, **kwargs):
        current[0] = stage.name
        try:
            return train_stage(ctx, stage, **kwargs)
        finally:
            current[0] = None

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context, "load_split", recording_load_split)
        patch.setattr(pipeline, "train_stage", recording_train_stage)
        report = pipeline.run(load_config(TINY), workdir, jobs=1)  # one process: the recording sees every read
    return workdir, report, reads


@pytest.fixture(scope="session")
def tiny_run(tiny_run_and_reads):
    """The workdir of the finished tiny run."""
    return tiny_run_and_reads[0]


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory):
    """``tiny_run`` exported with its utility model: the bundle directory."""
    from ppfer_jax import export

    return export.export(tiny_run, tmp_path_factory.mktemp("bundles") / "tiny", with_utility=True)
