"""`step` and `integrate`: fixed-step Runge--Kutta on any pytree, one `lax.scan` over steps."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .. import _tree
from .._custom_types import Args, RealScalarLike, Y
from ..schemes import ButcherTableau, Scheme, get_scheme
from ._rk import explicit_fevals, resolve_root, rk_step
from ._stats import StepStats


def _prepare(y, scheme, root):
    y = jtu.tree_map(jnp.asarray, y)
    dtype = _tree.real_dtype(y)
    scheme = get_scheme(scheme)
    root = resolve_root(root) if scheme.implicit else None
    return y, dtype, scheme, root


def step(
    f,
    t: RealScalarLike,
    y: Y,
    h: RealScalarLike,
    args: Args = None,
    *,
    scheme: "str | Scheme | ButcherTableau" = "rk4",
    root=None,
    return_stats: bool = False,
    probe=None,
):
    """One Runge--Kutta step of size `h` from ``(t, y)`` for ``dy/dt = f(t, y, args)``.

    With ``scheme="euler"`` this is the residual block ``y + h f(t, y, args)``; with
    ``scheme="backward_euler"`` it is the implicit block ``y_next = y + h f(t + h, y_next, args)``.

    **Arguments:**

    - `f`: the vector field, ``f(t, y, args)``, returning a pytree shaped like `y`.
    - `t`, `h`: time and step size (scalars; may be traced).
    - `y`: the state, any pytree of floating or complex arrays.
    - `args`: passed to `f`; arrays in it (and arrays `f` closes over) are differentiable.
    - `scheme`: a name from [`resode.list_schemes`][], a [`Scheme`][] or a [`ButcherTableau`][].
    - `root`: for implicit schemes, the solver of the stage equations: a solver object
      ([`resode.Newton`][], [`resode.Picard`][], ...) or its name; `None` is Newton--Krylov with a
      tolerance of 100 machine epsilons. Stages are differentiated by the implicit function
      theorem, never through the iterations.
    - `return_stats`: also return a [`StepStats`][] (evaluations, stage iterations, residuals).
    - `probe`: a [`resode.backward_probe`][]; its cotangent holds the statistics of the stage
      solves' backward passes ([`resode.BackwardStats`][]). Implicit schemes only.

    **Returns:** `y_next` (same structure and dtypes as `y`), or ``(y_next, stats)``.
    """
    y, dtype, scheme, root = _prepare(y, scheme, root)
    t = jnp.asarray(t, dtype)
    h = jnp.asarray(h, dtype)
    y_next, stats = rk_step(scheme, f, t, y, h, args, root, probe)
    return (y_next, stats) if return_stats else y_next


def _check_per_step_args(args: Args, num_steps: int) -> None:
    for path, leaf in jtu.tree_flatten_with_path(args)[0]:
        if eqx.is_array(leaf) and (leaf.ndim == 0 or leaf.shape[0] != num_steps):
            raise ValueError(
                f"per_step_args=True needs every array in `args` to have leading axis num_steps="
                f"{num_steps}; args{jtu.keystr(path)} has shape {tuple(leaf.shape)}."
            )


def integrate(
    f,
    y0: Y,
    t0: RealScalarLike,
    t1: RealScalarLike,
    num_steps: int,
    args: Args = None,
    *,
    scheme: "str | Scheme | ButcherTableau" = "rk4",
    root=None,
    per_step_args: bool = False,
    save_trajectory: bool = False,
    return_stats: bool = False,
    checkpoint: bool = False,
    probe=None,
):
    """`num_steps` equal steps of `scheme` from `t0` to `t1`, as one `jax.lax.scan`.

    Compiles once whatever `num_steps` is: the step is traced once and scanned.

    **Arguments:** as [`resode.step`][], plus

    - `y0`: the initial state (any pytree of floating or complex arrays).
    - `t0`, `t1`: start and end times (may be traced; ``t1 < t0`` integrates backwards).
    - `num_steps`: a static positive integer; ``h = (t1 - t0) / num_steps``.
    - `per_step_args`: if true, every array leaf of `args` has leading axis `num_steps` and step
      k uses slice k: untied weights, i.e. a classic ResNet with `num_steps` blocks. Non-array
      leaves are shared by all steps.
    - `save_trajectory`: return the whole trajectory instead of the final state.
    - `checkpoint`: wrap each step in `jax.checkpoint`, so that reverse-mode autodiff stores only
      the state between steps and recomputes the stages: less memory, about one more forward
      pass of compute.
    - `probe`: as in [`resode.step`][], summed over every stage solve of every step.

    **Returns:** `y1`; or ``(ts, ys)`` with `save_trajectory` (`ts` has shape
    ``(num_steps + 1,)``; each leaf of `ys` has leading axis ``num_steps + 1``, starting with
    `y0`). With `return_stats`, a [`StepStats`][] summed over all steps is appended.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive Python int, got {num_steps!r}.")
    y0, dtype, scheme, root = _prepare(y0, scheme, root)
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    h = (t1 - t0) / num_steps
    if per_step_args:
        _check_per_step_args(args, num_steps)
        dynamic, static = eqx.partition(args, eqx.is_array)
    else:
        dynamic, static = None, None

    def body(carry, x):
        y, stats = carry
        k, args_k = x
        args_k = eqx.combine(args_k, static) if per_step_args else args
        y_next, step_stats = rk_step(scheme, f, t0 + k.astype(dtype) * h, y, h, args_k, root, probe)
        if scheme.implicit:  # Explicit costs are static: counted outside the loop.
            stats = stats + step_stats
        return (y_next, stats), (y_next if save_trajectory else None)

    if checkpoint:
        body = jax.checkpoint(body)
    stats0 = StepStats.explicit(0, dtype) if scheme.implicit else None
    xs = (jnp.arange(num_steps, dtype=jnp.int32), dynamic)
    (y1, stats), ys = jax.lax.scan(body, (y0, stats0), xs)
    if not scheme.implicit:
        stats = StepStats.explicit(explicit_fevals(scheme.tableau) * num_steps, dtype)
    if save_trajectory:
        ts = t0 + (t1 - t0) * (jnp.arange(num_steps + 1, dtype=dtype) / num_steps)
        ys = jtu.tree_map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
        out = (ts, ys)
    else:
        out = (y1,)
    if return_stats:
        out = out + (stats,)
    return out[0] if len(out) == 1 else out
