"""Shared test setup: CPU only, a persistent XLA compile cache, absl flags parsed for grain workers, and one
finished tiny run (with its exported bundle) for the tests that need trained networks."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the platform is pinned)
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Compiling dominates this suite on a 2-core CPU; the cache makes repeated runs several times faster.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "ppfer_jax_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

flags.FLAGS.mark_as_parsed()

TINY = "configs/synthetic.py:tiny"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The workdir of one finished ``ppfer-jax run`` of the tiny config (about a minute), shared by the session."""
    from ppfer_jax import pipeline
    from ppfer_jax.config import load_config

    workdir = tmp_path_factory.mktemp("tiny_run")
    pipeline.run(load_config(TINY), workdir, make_figure=False)
    return workdir


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory):
    """``tiny_run`` exported with its utility model: the bundle directory."""
    from ppfer_jax import export

    return export.export(tiny_run, tmp_path_factory.mktemp("bundles") / "tiny", with_utility=True)
