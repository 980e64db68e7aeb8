"""The generic Runge--Kutta engine: every scheme is a tableau run by the code below.

Explicit and diagonally implicit tableaux share one stage loop (an implicit diagonal entry turns
that stage into a fixed-point solve); fully implicit tableaux solve all stages as one block.
Zero coefficients are skipped at trace time, so a sparse tableau costs what it should.
"""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .. import _tree
from .._custom_types import Args, Y
from ..schemes import ButcherTableau, Scheme
from ..solvers import (
    AbstractFixedPointSolver,
    ImplicitAdjoint,
    Newton,
    resolve_solver,
    solve_fixed_point,
)
from ._stats import StepStats

_ADJOINT = ImplicitAdjoint()


def resolve_root(root) -> AbstractFixedPointSolver:
    """`None` -> Newton-Krylov; otherwise a solver name or object (as `fixed_point`'s `solver`)."""
    return Newton() if root is None else resolve_solver(root)


def _stats_of(sol, evals_per_iter: int, dtype) -> StepStats:
    return StepStats(
        num_fevals=(sol.num_steps + sol.stats.get("num_line_search_evals", 0)) * evals_per_iter,
        num_jvps=sol.stats.get("num_linear_steps", jnp.array(0, jnp.int32)) * evals_per_iter,
        root_steps=sol.num_steps,
        root_residual=sol.residual.astype(jnp.promote_types(dtype, jnp.float32)),
        root_converged=sol.converged,
    )


def _stage_map(f, t_i, y_base: Y, h, a_ii: float):
    """The stage equation of a diagonal entry: Y = y_base + h a_ii f(t_i, Y)."""

    def stage(z, args):
        return _tree.lincomb(y_base, h, [a_ii], [f(t_i, z, args)])

    return stage


def _needed_stages(tab: ButcherTableau) -> list[bool]:
    """Whether each stage's f-value is used (by the weights or a later stage)."""
    a, b = tab.a, tab.b
    needed = [bool(b[i] != 0 or (a[i + 1 :, i] != 0).any()) for i in range(tab.num_stages)]
    if tab.stiffly_accurate:
        needed[-1] = False  # The last stage value is the result; its f-value is never used.
    return needed


def explicit_fevals(tab: ButcherTableau) -> int:
    """Evaluations of f per step of an explicit tableau."""
    return sum(_needed_stages(tab))


def implicit_vjp_counts(tab: ButcherTableau) -> tuple[int, int]:
    """For the backward pass of one implicit step: ``(explicit, per_iteration)``, the field VJPs
    outside the stage solves (the stage derivatives combined after solving) and the field VJPs
    of one adjoint iteration (or of the parameter VJP) of a stage solve."""
    if tab.explicit or tab.diagonally_implicit:
        return sum(_needed_stages(tab)), 1
    s = tab.num_stages
    return (0 if tab.stiffly_accurate else s), s


def _lower_triangular_step(tab: ButcherTableau, f, t, y: Y, h, args: Args, root, dtype, probe=None):
    a, b, c = tab.a, tab.b, tab.c
    s = tab.num_stages
    needed = _needed_stages(tab)
    ks: list = []
    stats = StepStats.explicit(0, dtype)
    for i in range(s):
        y_i = _tree.lincomb(y, h, a[i, :i], ks)
        t_i = t + float(c[i]) * h
        if a[i, i] != 0:
            sol = solve_fixed_point(
                _stage_map(f, t_i, y_i, h, float(a[i, i])),
                y_i,
                args,
                root,
                _ADJOINT,
                probe=probe,
            )
            y_i = sol.value
            stats = stats + _stats_of(sol, 1, dtype)
        if tab.stiffly_accurate and i == s - 1:
            return y_i, stats  # b is the last row of a: the last stage value is the result.
        if needed[i]:
            ks.append(f(t_i, y_i, args))
            stats = stats + StepStats.explicit(1, dtype)
        else:
            ks.append(None)
    return _tree.lincomb(y, h, b, ks), stats


def _fully_implicit_step(tab: ButcherTableau, f, t, y: Y, h, args: Args, root, dtype, probe=None):
    s = tab.num_stages
    ts = t + jnp.asarray(tab.c, dtype) * h
    stage_f = jax.vmap(f, in_axes=(0, 0, None))

    def stages(z, args):
        return _tree.matmul_stages(y, h, tab.a, stage_f(ts, z, args))

    z0 = jtu.tree_map(lambda x: jnp.broadcast_to(x[None], (s,) + x.shape), y)
    sol = solve_fixed_point(stages, z0, args, root, _ADJOINT, probe=probe)
    stats = _stats_of(sol, s, dtype)
    if tab.stiffly_accurate:
        return jtu.tree_map(lambda z: z[-1], sol.value), stats
    ks = stage_f(ts, sol.value, args)
    y_next = _tree.lincomb(y, h, tab.b, [jtu.tree_map(lambda k, i=i: k[i], ks) for i in range(s)])
    return y_next, stats + StepStats.explicit(s, dtype)


def rk_step(
    scheme: Scheme,
    f,
    t,
    y: Y,
    h,
    args: Args,
    root: AbstractFixedPointSolver | None,
    probe=None,
):
    """One step of `scheme`; returns ``(y_next, StepStats)``. Inputs already validated.
    `probe` (a [`backward_probe`][]) observes the stage solves' backward passes."""
    tab = scheme.tableau
    dtype = _tree.real_dtype(y)
    if tab.explicit or tab.diagonally_implicit:
        return _lower_triangular_step(tab, f, t, y, h, args, root, dtype, probe)
    return _fully_implicit_step(tab, f, t, y, h, args, root, dtype, probe)
