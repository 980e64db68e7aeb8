"""The one loop that runs every fixed-point solver (no custom derivatives here)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .. import _tree
from .._custom_types import Args, PyTree
from ._solution import FixedPointSolution
from ._solvers import AbstractFixedPointSolver


def precision_floor(dtype) -> float:
    """The smallest relative tolerance a solve in `dtype` is held to.

    For the 16-bit floats (bfloat16, float16) it is their machine epsilon (7.8e-3, 9.8e-4): the
    rounding of f(z) alone leaves a relative residual of that order, so a tolerance written for
    float32 (say 1e-4) could never be met and every solve would run to `max_steps`. For float32
    and wider it is 0: a tolerance tighter than they can reach is kept, and reported as not
    converged.
    """
    eps = float(jnp.finfo(dtype).eps)
    return eps if eps > float(jnp.finfo(jnp.float32).eps) else 0.0


def default_tol(dtype) -> float:
    """100 machine epsilons of `dtype` (1.2e-5 for float32, 2.2e-14 for float64); for the
    16-bit floats their [`precision_floor`][resode.solvers.precision_floor] (the epsilon)."""
    return precision_floor(dtype) or 100.0 * float(jnp.finfo(dtype).eps)


def resolve_tol(tol: float | None, z: PyTree) -> float:
    """The relative tolerance of a solve of state `z`: `tol` (default `default_tol`), never below
    the state dtype's `precision_floor`."""
    dtype = _tree.real_dtype(z)
    return default_tol(dtype) if tol is None else max(float(tol), precision_floor(dtype))


def check_map(fn, z0: PyTree, args: Args) -> None:
    """Fail at trace time, naming both structures, if `fn(z0, args)` does not look like `z0`."""
    out = jax.eval_shape(fn, z0, args)
    want = jax.eval_shape(lambda: z0)
    if jtu.tree_structure(out) != jtu.tree_structure(want) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(want), strict=True)
    ):
        raise ValueError(
            "The fixed-point map must return a pytree with the same structure, shapes and dtypes "
            f"as its input z0.\n  z0:      {want}\n  f(z0):   {out}"
        )


def residual_dtype(z: PyTree) -> jnp.dtype:
    """The dtype residuals of state `z` are measured in: its real dtype, at least float32."""
    return jnp.promote_types(_tree.real_dtype(z), jnp.float32)


def residual_test(fz: PyTree, z: PyTree, tol: float, atol: float = 0.0):
    """The stopping test of every solve: ``(done, relative_residual)``.

    ``done`` is ``||fz - z|| <= atol + tol ||fz||`` with both norms finite (so that an overflow,
    inf <= tol * inf, never passes); the relative residual is ``||fz - z|| / ||fz||`` (0 when both
    vanish, inf when the scale vanishes alone or anything is not finite). A diagnostic: it is
    never differentiated (the unrolled adjoint would otherwise meet sqrt(0) and 0/0).
    """
    dtype = residual_dtype(z)
    if dtype != _tree.real_dtype(z):  # a 16-bit state: measured in float32
        fz, z = _tree.astype(fz, dtype), _tree.astype(z, dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    err = _tree.norm(jax.lax.stop_gradient(_tree.sub(fz, z)))
    scale = _tree.norm(jax.lax.stop_gradient(fz))
    finite = jnp.isfinite(err) & jnp.isfinite(scale)
    done = finite & (err <= atol + tol * scale)
    safe_scale = jnp.where(scale > 0, scale, 1.0)
    res = jnp.where(scale > 0, err / safe_scale, jnp.where(err > 0, inf, 0.0)).astype(dtype)
    return done, jnp.where(finite, res, inf)


def iterate(
    solver: AbstractFixedPointSolver,
    fn,
    z0: PyTree,
    args: Args,
    *,
    tol: float | None = None,
    max_steps: int | None = None,
    differentiable: bool = False,
) -> FixedPointSolution:
    """Run `solver` on ``z = fn(z, args)`` from `z0`.

    Stops when ``||fn(z) - z|| <= atol + tol * ||fn(z)||`` or after `max_steps` iterations
    (`tol`/`max_steps` default to the solver's own). Tracks the iterate with the lowest relative
    residual and returns it; a proposed iterate that is not finite is replaced by ``fn(z)`` (a
    plain Picard step; Anderson guards its own proposal the same way), so a finite problem never
    turns into NaN. Never raises under jit.

    Under `jax.vmap`, solvers whose state holds no counters (Picard, Anderson, Broyden) run a
    loop with its own batching rule: each example stops at its own iteration, as unbatched, but
    only the iterate and its bookkeeping are selected per example, not the solver's history.

    By default this is a `lax.while_loop`, which reverse-mode autodiff cannot go through: the
    adjoints in `_adjoint.py` attach gradients. With `differentiable=True` it is a `lax.scan` of
    exactly `max_steps` iterations (finished ones leave the state unchanged), which autodiff can
    backpropagate through at a memory cost growing with `max_steps` (the unrolled adjoint).
    """
    tol = resolve_tol(solver.tol if tol is None else tol, z0)
    max_steps = solver.max_steps if max_steps is None else max_steps
    atol = solver.atol

    def cond(carry):
        k, _, _, _, done, _ = carry
        return (~done) & (k < max_steps)

    def body(carry, solver, fn, args):
        k, z, best_z, best_res, _, state = carry
        fz, aux = solver.evaluate(fn, z, args)
        done, res = residual_test(fz, z, tol, atol)
        better = res < best_res
        best_z = _tree.where(better, z, best_z)
        best_res = jnp.where(better, res, best_res)

        def advance(_):
            z_next, new_state = solver.update(z, fz, aux, state, tol)
            if solver.may_blow_up:
                z_next = _tree.where(_tree.all_finite(z_next), z_next, fz)
            return z_next, new_state

        if solver.update_when_done and not differentiable:
            # No conditional: once done the while loop ends and the extra update is discarded; a
            # cond here would copy the solver state every step. (The unrolled scan keeps the
            # cond: a masked-out update could still send NaN through the backward pass.)
            z_next, state = advance(None)
        else:
            z_next, state = jax.lax.cond(done, lambda _: (z, state), advance, None)
        return k + 1, z_next, best_z, best_res, done, state

    def init(solver, z0, args):
        # (Every array made here, inside whichever trace runs the loop: a constant made outside
        # would be a tracer of the enclosing trace, which the loop's vmap rule cannot close over.)
        inf = jnp.asarray(jnp.inf, residual_dtype(z0))
        return (jnp.array(0, jnp.int32), z0, z0, inf, jnp.array(False), solver.init(z0, args))

    if differentiable:

        def scan_body(carry, _):
            active = cond(carry)
            new = body(carry, solver, fn, args)
            return jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new, carry), None

        carry, _ = jax.lax.scan(scan_body, init(solver, z0, args), None, length=max_steps)
    elif solver.update_when_done:
        carry = _batch_friendly_loop(cond, body, init, solver, fn, z0, args)
    else:
        body_ = lambda c: body(c, solver, fn, args)
        carry = jax.lax.while_loop(cond, body_, init(solver, z0, args))
    k, _, best_z, best_res, done, state = carry
    return FixedPointSolution(
        value=best_z, num_steps=k, residual=best_res, converged=done, stats=solver.stats(state)
    )


def _batch_friendly_loop(cond, body, init, solver, fn, z0, args):
    """`lax.while_loop(cond, body, init(...))`, with a vmap rule of its own.

    Under `jax.vmap` a while loop whose predicate differs per example runs until every example is
    done and selects, per example, between the new and the old value of *every* carry leaf on
    every iteration: for Anderson and Broyden that copies their whole histories each step (on a
    batch of 256 solves of width 64, three quarters of an Anderson iteration's time). This rule
    selects only the iterate, the best iterate, its residual, the flag and the counter; the
    solver's state advances for finished examples too, harmlessly, since their iterate is frozen
    and what they return was fixed when they finished. Used for solvers whose state holds no
    counters (`update_when_done`), so that each example's result and statistics are those of its
    own unbatched loop.
    """
    fn = eqx.filter_closure_convert(fn, z0, args)  # what fn closes over becomes an input
    dynamic, static = eqx.partition((solver, fn, z0, args), eqx.is_array)

    def parts(dyn):
        return eqx.combine(dyn, static)

    @jax.custom_batching.custom_vmap
    def run(dyn):
        solver, fn, z0, args = parts(dyn)
        return jax.lax.while_loop(cond, lambda c: body(c, solver, fn, args), init(solver, z0, args))

    @run.def_vmap
    def _rule(axis_size, in_batched, dyn):
        (batched,) = in_batched
        axes = jtu.tree_map(lambda b: 0 if b else None, batched)
        carry = jax.vmap(
            lambda d: init(parts(d)[0], parts(d)[2], parts(d)[3]),
            in_axes=(axes,),
            axis_size=axis_size,
        )(dyn)

        def one_body(c, d):
            solver, fn, _, args = parts(d)
            return body(c, solver, fn, args)

        vbody = jax.vmap(one_body, in_axes=(0, axes))
        vcond = jax.vmap(cond)

        def loop_body(c):
            active = vcond(c)
            new = vbody(c, dyn)

            def keep(a, b):
                return jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 1)), a, b)

            frozen = jtu.tree_map(keep, new[:5], c[:5])
            return (*frozen, new[5])

        out = jax.lax.while_loop(lambda c: jnp.any(vcond(c)), loop_body, carry)
        return out, jtu.tree_map(lambda _: True, out)

    return run(dynamic)
