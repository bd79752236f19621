"""Shared test setup: CPU only, a persistent XLA compile cache, absl flags parsed for grain workers."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the platform is pinned)
from absl import flags  # noqa: E402

# Compiling dominates this suite on a 2-core CPU; the cache makes repeated runs several times faster.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "ppfer_jax_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

flags.FLAGS.mark_as_parsed()
