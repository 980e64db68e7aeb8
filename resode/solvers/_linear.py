"""Matrix-free linear solves (lineax), with a norm-relative tolerance."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree

from .._custom_types import PyTree
from ._krylov import gmres


def linear_solve(
    matvec: Callable[[PyTree], PyTree],
    rhs: PyTree,
    *,
    rtol: float,
    max_steps: int,
    restart: int = 20,
    solver: lx.AbstractLinearSolver | None = None,
):
    """Solve ``matvec(x) = rhs`` without forming a matrix.

    The pytree is flattened to one real vector first: leaves of mixed dtypes are promoted (and
    restored afterwards), and a complex state becomes its (real, imaginary) parts, because the
    derivative of a map that is not holomorphic is only R-linear and complex GMRES would be wrong
    for it. The right-hand side is scaled to unit norm (and the answer scaled back), so that tiny
    but valid right-hand sides behave like any other.

    By default this is resode's restarted GMRES (`_krylov.gmres`), stopped at the Krylov step
    where ``||rhs - A x|| <= rtol ||rhs||``. Any lineax solver may be passed as `solver` instead
    (e.g. ``lx.LU()``, which materialises the matrix: only for small states).

    Never raises: a solve that runs out of steps returns its last iterate.

    **Returns:** ``(x, num_steps)`` (Krylov steps, or the lineax solver's own step count).
    """
    flat, unravel = ravel_pytree(rhs)
    is_complex = jnp.iscomplexobj(flat)
    if is_complex:
        n = flat.shape[0]
        to_vec = lambda z: jnp.concatenate([z.real, z.imag])
        from_vec = lambda v: jax.lax.complex(v[:n], v[n:]).astype(flat.dtype)
    else:
        to_vec = from_vec = lambda v: v

    def flat_matvec(v):
        out, _ = ravel_pytree(matvec(unravel(from_vec(v))))
        return to_vec(out.astype(flat.dtype))

    b = to_vec(flat)
    b_norm = jnp.linalg.norm(b)
    safe_norm = jnp.where(b_norm > 0, b_norm, 1.0)
    unit_b = b / safe_norm
    if solver is None:
        x, steps = gmres(flat_matvec, unit_b, rtol=rtol, max_steps=max_steps, restart=restart)
    else:
        operator = lx.FunctionLinearOperator(flat_matvec, jax.ShapeDtypeStruct(b.shape, b.dtype))
        sol = lx.linear_solve(operator, unit_b, solver, throw=False)
        x = sol.value
        steps = jnp.asarray(sol.stats.get("num_steps", 0), dtype=jnp.int32)
    x = jnp.where(b_norm > 0, x * safe_norm, 0)  # A zero right-hand side gives zero.
    return unravel(from_vec(x)), steps
