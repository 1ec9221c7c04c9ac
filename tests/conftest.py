"""Test set-up: 8 simulated CPU devices for the sharding invariants, float32 matmuls."""
import os

import pytest

# Must be set before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def run_env(tmp_path_factory):
    """The environment experiment subprocesses start with (a user's: see `_experiment_files.
    user_env`), plus caches shared by the session's runs: the reference log-prob cache, and a
    persistent XLA cache so that a program one run compiled is not compiled again by the next
    (the same programs, so the same results; the smoke, notebook and launch tests all start the
    same tiny configurations)."""
    from _experiment_files import user_env

    d = tmp_path_factory.mktemp("run_env")
    return user_env(ALIGN_JAX_CACHE=str(d / "reference_cache"),
                    JAX_COMPILATION_CACHE_DIR=str(d / "xla_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
