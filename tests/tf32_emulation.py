"""pytest plugin: run the tests on the CPU with XLA:GPU's default float32 matrix products.

On Ampere and Hopper GPUs (H100, H200) XLA multiplies float32 matrices and convolutions in
TensorFloat-32 unless a product asks for more precision: each operand is rounded to 10 mantissa bits
(relative error ~2.4e-4 per element) and the products are summed in float32. This plugin rounds the
operands of every float32 ``dot_general`` and ``conv_general_dilated`` lowered for the CPU the same
way (round to nearest), except where the product's ``precision`` asks for more than ``DEFAULT``
(``precision="highest"``, ``jax.default_matmul_precision("highest")``). So a machine without a GPU
can tell which tests and which library computations depend on float32 products being exact:

    PYTHONPATH=tests .venv/bin/python -m pytest -p tf32_emulation tests/test_knife.py

It relies on JAX internals (the MLIR lowering table) and is a developer's tool, never loaded by
default. Programs it lowers differ from normal ones, so the persistent compilation cache never
mixes the two. Processes the tests start (sweep workers, CLI runs) do not load it, so a test that
compares their numbers with the test process's own fails under it (``test_sweep_status_resume_and_report``).
"""

import jax.numpy as jnp
from jax import lax
from jax._src.interpreters import mlir
from jax._src.lax import convolution
from jax._src.lax import lax as lax_internal


def _round_to_tf32(x):
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    bits = (bits + jnp.uint32(0x1000)) & jnp.uint32(0xFFFFE000)  # keep 10 of 23 mantissa bits, rounded
    return lax.bitcast_convert_type(bits, jnp.float32)


_lower_round = mlir.lower_fun(_round_to_tf32, multiple_results=False)


def _default_precision(precision) -> bool:
    if precision is None:
        return True
    entries = precision if isinstance(precision, tuple) else (precision,)
    return all(p is None or p == lax.Precision.DEFAULT for p in entries)


def _emulate(primitive) -> None:
    original = mlir._platform_specific_lowerings["cpu"][primitive].rule

    def rule(ctx, lhs, rhs, **params):
        if _default_precision(params.get("precision")):
            lhs_aval, rhs_aval = ctx.avals_in
            if lhs_aval.dtype == jnp.float32:
                (lhs,) = _lower_round(ctx.replace(avals_in=[lhs_aval], avals_out=[lhs_aval]), lhs)
            if rhs_aval.dtype == jnp.float32:
                (rhs,) = _lower_round(ctx.replace(avals_in=[rhs_aval], avals_out=[rhs_aval]), rhs)
        return original(ctx, lhs, rhs, **params)

    mlir.register_lowering(primitive, rule, platform="cpu")


_emulate(lax_internal.dot_general_p)
_emulate(convolution.conv_general_dilated_p)
