"""Test-wide settings. Runs before any test module imports JAX."""

import os

# Eight fake CPU devices for the sharding tests; must be set before the JAX backend starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Persistent compilation cache: a second run of the suite skips most XLA compiles.
_CACHE = os.environ.get("HUMANDIFF_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
