"""Test set-up: CPU, float32, and JAX's persistent compilation cache (compilation dominates on 2 cores)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests are tiny programs whose time goes to compiling them: LLVM at -O0 for everything but the
# training programs (``plastix.jit.jit_program`` asks for -O1 itself). Set before JAX starts, and
# inherited by the processes the tests start (CLI runs, Ray workers).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("PLASTIX_COMPILATION_CACHE", _CACHE)  # processes the tests start (Ray workers) share it
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

if jax.default_backend() != "cpu":
    # XLA:GPU multiplies float32 matrices in TensorFloat-32 by default (Ampere, Hopper); the tests
    # compare float32 results with float64 NumPy references and other computation paths, so on a GPU
    # they ask for float32 products. Which tests need it: `pytest -p tf32_emulation` (tests/tf32_emulation.py).
    jax.config.update("jax_default_matmul_precision", "highest")

from plastix.jit import collect_garbage_less_often  # noqa: E402

collect_garbage_less_often()  # tests trace many programs
