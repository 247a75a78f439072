"""Test setup: 8 fake CPU devices (set before JAX is imported), f32 matmuls at full precision."""

import os

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runs in tests don't track to W&B unless a test asks (tests/test_tracking.py does).
os.environ.setdefault("WANDB_MODE", "disabled")
# The command lines that tests start skip the huge-page restart (lm_research/hugepages.py):
# their processes are short and compile-bound, where zeroing 2 MiB pages costs more than it
# saves (tests/test_multihost.py: 57 s without, 63 s with). tests/test_hugepages.py runs it.
os.environ.setdefault("LM_RESEARCH_HUGEPAGES", "0")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_default_matmul_precision", "highest")

# Tiny models compile far slower than they run: skip XLA's expensive CPU passes.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def fast_decoding_compiles():
  """Cheaper compiles for a module's decoding searches (decoding.api.COMPILER_OPTIONS),
  restored afterwards; a module opts in with pytest.mark.usefixtures."""
  from lm_research import decoding  # noqa: PLC0415  (after the XLA flags above)
  saved, decoding.api.COMPILER_OPTIONS = decoding.api.COMPILER_OPTIONS, FAST_COMPILE
  yield
  decoding.api.COMPILER_OPTIONS = saved
