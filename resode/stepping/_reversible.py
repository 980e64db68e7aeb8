r"""Reversible residual stepping: depth whose backward pass rebuilds the states instead of storing
them, so that reverse-mode memory does not grow with the number of steps.

A reversible method is a step ``s -> s'`` on an augmented state (e.g. position and velocity) with
an inverse ``s' -> s`` in closed form. [`reversible_integrate`][] runs `num_steps` of them as one
`lax.scan` and attaches one custom VJP: the backward pass walks the steps in reverse, rebuilds
each state from the next one with the inverse, and backpropagates through that one step. Only the
final state is kept between the passes. Exact methods ([`Momentum`][], [`Leapfrog`][],
[`ReversibleHeun`][]) rebuild the states up to rounding, so the gradients are those of storing
autodiff up to rounding; [`ReverseStep`][] rebuilds an ordinary explicit stack approximately, by a
step of size -h (Sander et al., NeurIPS 2022, "Do residual neural networks discretize neural
ODEs?"), and its gradients carry the reconstruction error.
"""

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .. import _tree
from .._custom_types import Args, RealScalarLike, Y
from ..schemes import get_scheme
from ._integrate import _check_per_step_args
from ._rk import explicit_fevals, rk_step

State = Any


def _axpy(a, x, y):
    """``a x + y`` leafwise over pytrees (a a scalar)."""
    return jtu.tree_map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


def _lin(*terms):
    """``sum_i c_i x_i`` leafwise for ``(c_i, x_i)`` pairs (c_i scalars)."""
    (c0, x0), *rest = terms

    def combine(*leaves):
        out = c0 * leaves[0]
        for (c, _), leaf in zip(rest, leaves[1:], strict=True):
            out = out + c * leaf
        return out.astype(leaves[0].dtype)

    return jtu.tree_map(combine, x0, *(x for _, x in rest))


class AbstractReversibleMethod(eqx.Module):
    """A step on an augmented state with a closed-form inverse.

    Subclasses implement `init` (state from ``y0``), `step` (``s_n -> s_{n+1}`` over ``[t, t +
    h]``), `inverse` (``s_{n+1} -> s_n``, the same `t` and `h`; `prev_args` are the arguments of
    the step before, for methods that carry an evaluation from it) and `output` (the ``y`` part
    of a state), and set `exact` (whether `inverse` undoes `step` exactly in exact arithmetic),
    `fevals_per_step` and `init_fevals`. Array fields (e.g. a learned momentum) are
    differentiable parameters.
    """

    exact: ClassVar[bool] = True
    fevals_per_step: ClassVar[int] = 1
    init_fevals: ClassVar[int] = 0

    def init(self, f, t0, y0: Y, args: Args) -> State:
        raise NotImplementedError

    def step(self, f, t, s: State, h, args: Args) -> State:
        raise NotImplementedError

    def inverse(self, f, t, s_next: State, h, args: Args, prev_args: Args = None) -> State:
        raise NotImplementedError

    def output(self, s: State) -> Y:
        raise NotImplementedError


class Momentum(AbstractReversibleMethod):
    r"""Momentum residual step (Sander et al., ICML 2021, "Momentum residual neural networks"):

    $$v_{n+1} = \gamma v_n + (1 - \gamma) f(t_n, x_n), \qquad x_{n+1} = x_n + h\, v_{n+1},$$

    from $v_0 = 0$, inverted by $x_n = x_{n+1} - h v_{n+1}$, $v_n = (v_{n+1} - (1 - \gamma)
    f(t_n, x_n)) / \gamma$. At $\gamma = 0$ it is the Euler ResNet $x + h f(x)$ (not invertible);
    the inverse divides by $\gamma$, so floating-point reconstruction drift grows like
    $\gamma^{-N}$ over N steps. In float32 this ruins deep stacks: an untied stack of random MLP
    blocks rebuilt its input to 1e-6 at depth 64 but not at all at depth 256 with $\gamma = 0.9$
    (relative error 2e2), nor at depth 64 with $\gamma = 0.5$. Prefer [`Leapfrog`][] or
    [`ReversibleHeun`][] for deep float32 stacks, and check with [`reversible_rebuild`][].

    **Arguments:** `gamma` in (0, 1), a float or a scalar array (an array is a trainable
    parameter; keep it in (0, 1), e.g. by parameterising it through a sigmoid).
    """

    gamma: Any = 0.9

    def __check_init__(self):
        if isinstance(self.gamma, (int, float)) and not 0.0 < self.gamma < 1.0:
            raise ValueError(f"Momentum: `gamma` must be in (0, 1), got {self.gamma!r}.")

    def init(self, f, t0, y0, args):
        return y0, jtu.tree_map(jnp.zeros_like, y0)

    def _gamma(self, v):
        return jnp.asarray(self.gamma, _tree.real_dtype(v))  # in the state's precision

    def step(self, f, t, s, h, args):
        x, v = s
        g = self._gamma(v)
        v = _lin((g, v), (1.0 - g, f(t, x, args)))
        return _axpy(h, v, x), v

    def inverse(self, f, t, s_next, h, args, prev_args=None):
        x_next, v_next = s_next
        g = self._gamma(v_next)
        x = _axpy(-h, v_next, x_next)
        fx = f(t, x, args)
        v = jtu.tree_map(lambda vn, fi: ((vn - (1.0 - g) * fi) / g).astype(vn.dtype), v_next, fx)
        return x, v

    def output(self, s):
        return s[0]


class Leapfrog(AbstractReversibleMethod):
    r"""Leapfrog (symplectic Euler) step for the second-order equation
    $x'' = f(t, x)$, written with a velocity:

    $$v_{n+1} = v_n + h f(t_n, x_n), \qquad x_{n+1} = x_n + h\, v_{n+1},$$

    from $v_0 = 0$, inverted by $x_n = x_{n+1} - h v_{n+1}$, $v_n = v_{n+1} - h f(t_n, x_n)$: no
    division, so the reconstruction is well conditioned (the Hamiltonian-inspired networks of
    Chang et al., AAAI 2018, "Reversible architectures for arbitrarily deep residual neural
    networks"). Started from $v_0 = 0$ as the velocity at $t_0$, it is first order in h for
    $x'' = f(x)$ (measured: order 1.00 on $x'' = -x$); Störmer--Verlet's second order needs
    $v_0$ to be the velocity at $t_0 - h/2$.
    """

    def init(self, f, t0, y0, args):
        return y0, jtu.tree_map(jnp.zeros_like, y0)

    def step(self, f, t, s, h, args):
        x, v = s
        v = _axpy(h, f(t, x, args), v)
        return _axpy(h, v, x), v

    def inverse(self, f, t, s_next, h, args, prev_args=None):
        x_next, v_next = s_next
        x = _axpy(-h, v_next, x_next)
        return x, _axpy(-h, f(t, x, args), v_next)

    def output(self, s):
        return s[0]


class ReversibleHeun(AbstractReversibleMethod):
    r"""The algebraically reversible Heun method (Kidger et al., 2021, "Efficient and accurate
    gradients for neural SDEs"), on the state $(y, \hat y, f(\hat y))$:

    $$\hat y_{n+1} = 2 y_n - \hat y_n + h f(t_n, \hat y_n), \quad
      y_{n+1} = y_n + \tfrac h2 \big(f(t_n, \hat y_n) + f(t_{n+1}, \hat y_{n+1})\big),$$

    from $\hat y_0 = y_0$. One evaluation per step (the last one is carried), second order for
    ODEs, and inverted exactly with one evaluation: $\hat y_n = 2 y_{n+1} - \hat y_{n+1} - h
    f(t_{n+1}, \hat y_{n+1})$, then $y_n$. With untied weights the carried evaluation
    $f(t_n, \hat y_n)$ belongs to step n - 1 (step 0's weights at the start), and the inverse
    rebuilds it with those weights.
    """

    init_fevals: ClassVar[int] = 1

    def init(self, f, t0, y0, args):
        return y0, y0, f(t0, y0, args)

    def step(self, f, t, s, h, args):
        y, yh, fh = s
        yh_next = _lin((2.0, y), (-1.0, yh), (h, fh))
        fh_next = f(t + h, yh_next, args)
        return _lin((1.0, y), (h / 2, fh), (h / 2, fh_next)), yh_next, fh_next

    def inverse(self, f, t, s_next, h, args, prev_args=None):
        y_next, yh_next, fh_next = s_next
        yh = _lin((2.0, y_next), (-1.0, yh_next), (-h, fh_next))
        # the carried evaluation at t was made by the previous step, with its weights
        fh = f(t, yh, args if prev_args is None else prev_args)
        return _lin((1.0, y_next), (-h / 2, fh), (-h / 2, fh_next)), yh, fh

    def output(self, s):
        return s[0]


class ReverseStep(AbstractReversibleMethod):
    """An ordinary explicit Runge--Kutta stack (`scheme`, e.g. ``"euler"``: a ResNet) whose
    backward pass rebuilds each state *approximately* by one step of the same scheme with step
    -h from the next state (Sander et al., NeurIPS 2022). Not exact: a step of -h after a step
    of h misses the start by the sum of their local errors, C h^(p+1) + C (-h)^(p+1) for a
    scheme of order p, which cancels at leading order when p is even. With weights smooth in
    depth the gradient error over N steps then falls like 1/N for Euler and 1/N^3 for Heun or
    midpoint (measured in `tests/test_reversible.py`; a 1/N^2 rate is quoted for Heun). Untied
    weights that are not smooth in depth break the premise. Memory flat in depth.

    **Arguments:** `scheme`, an explicit scheme name (default ``"euler"``).
    """

    scheme: str = eqx.field(default="euler", static=True)
    exact: ClassVar[bool] = False

    def __check_init__(self):
        if get_scheme(self.scheme).implicit:
            raise ValueError(f"ReverseStep: `scheme` must be explicit, got {self.scheme!r}.")

    @property
    def fevals_per_step(self) -> int:  # the scheme's stages, not the base class's constant
        return explicit_fevals(get_scheme(self.scheme).tableau)

    def init(self, f, t0, y0, args):
        return y0

    def _step(self, f, t, y, h, args):
        return rk_step(get_scheme(self.scheme), f, t, y, h, args, None, None)[0]

    def step(self, f, t, s, h, args):
        return self._step(f, t, s, h, args)

    def inverse(self, f, t, s_next, h, args, prev_args=None):
        return self._step(f, t + h, s_next, -h, args)

    def output(self, s):
        return s


REVERSIBLE_METHODS = {
    "momentum": Momentum,
    "leapfrog": Leapfrog,
    "reversible_heun": ReversibleHeun,
    "reverse_euler": lambda: ReverseStep("euler"),
    "reverse_heun": lambda: ReverseStep("heun"),
}
"""Names accepted wherever a reversible method is: `momentum` (γ = 0.9), `leapfrog`,
`reversible_heun` (exact), and `reverse_euler`, `reverse_heun` (approximate reconstruction of an
ordinary Euler or Heun stack)."""

ADJOINTS = ("reconstruct", "store", "checkpoint")
"""How [`reversible_integrate`][] is differentiated: `reconstruct` (the custom VJP that rebuilds
states: memory flat in depth), `store` (plain autodiff through the scan, which stores every
step's intermediates: the reference), `checkpoint` (autodiff storing one state per step and
recomputing the step)."""


def resolve_method(method) -> AbstractReversibleMethod:
    """A reversible method object from a name in [`REVERSIBLE_METHODS`][] or an object."""
    if isinstance(method, AbstractReversibleMethod):
        return method
    if isinstance(method, str) and method in REVERSIBLE_METHODS:
        return REVERSIBLE_METHODS[method]()
    raise ValueError(
        f"Unknown reversible method {method!r}. Valid: {', '.join(REVERSIBLE_METHODS)} or an "
        "AbstractReversibleMethod object."
    )


def _split_args(args, per_step_args, num_steps):
    """``(dynamic, static, tied)``: per-step array leaves (leading axis `num_steps`) and the rest,
    or (tied weights) the whole of `args` as `tied`."""
    if per_step_args:
        _check_per_step_args(args, num_steps)
        dynamic, static = eqx.partition(args, eqx.is_array)
        return dynamic, static, None
    return None, None, args


def _previous(dynamic):
    """Per-step arguments shifted by one step (step 0 keeps its own): what step k's inverse
    needs to rebuild an evaluation carried from step k - 1."""
    return jtu.tree_map(lambda a: jnp.concatenate([a[:1], a[:-1]]), dynamic)


def _args_at(static, tied, per_step_args, a_k):
    return eqx.combine(a_k, static) if per_step_args else tied


def _scan_steps(method, fn, s0, args3, t0, h, num_steps, per_step_args, save, ckpt):
    dynamic, static, tied = args3

    def body(s, x):
        k, a_k = x
        a = _args_at(static, tied, per_step_args, a_k)
        s_next = method.step(fn, t0 + k.astype(h.dtype) * h, s, h, a)
        return s_next, (method.output(s_next) if save else None)

    if ckpt:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, s0, (jnp.arange(num_steps, dtype=jnp.int32), dynamic))


@eqx.filter_custom_vjp
def _reconstructing(diff, static, t0, h, num_steps, per_step_args):
    method, fn, s0, dynamic, tied = diff
    args3 = (dynamic, static, tied)
    return _scan_steps(method, fn, s0, args3, t0, h, num_steps, per_step_args, False, False)[0]


@_reconstructing.def_fwd
def _reconstructing_fwd(perturbed, diff, static, t0, h, num_steps, per_step_args):
    del perturbed
    s1 = _reconstructing.fn(diff, static, t0, h, num_steps, per_step_args)
    return s1, s1  # the only residual: the final state


def _zeros_for(tree):
    return jtu.tree_map(jnp.zeros_like, eqx.filter(tree, eqx.is_inexact_array))


def _backward(method, fn, s1, g1, dynamic, tied, static, t0, h, num_steps, per_step_args):
    """The backward pass: rebuild each state from the next and backpropagate through one step."""
    shared = (method, fn, tied)  # what every step uses (tied is None for per-step weights)

    def body(carry, x):
        s_next, g_next, acc = carry
        k, a_k, a_prev = x
        t = t0 + k.astype(h.dtype) * h
        s = method.inverse(
            fn,
            t,
            s_next,
            h,
            _args_at(static, tied, per_step_args, a_k),
            _args_at(static, tied, per_step_args, a_prev),
        )

        def step(s_, sh, ak):
            return sh[0].step(sh[1], t, s_, h, _args_at(static, sh[2], per_step_args, ak))

        # One step's VJP at the rebuilt state: the state's cotangent goes on to the previous
        # step; the shared parameters' cotangents accumulate; per-step ones are scanned out.
        _, vjp = eqx.filter_vjp(step, s, shared, a_k)
        g_s, g_shared, g_ak = vjp(g_next)
        return (s, g_s, _tree.add(acc, g_shared)), g_ak

    xs = (jnp.arange(num_steps, dtype=jnp.int32), dynamic, _previous(dynamic))
    carry0 = (s1, g1, _zeros_for(shared))
    (_, g_s0, (g_method, g_fn, g_tied)), g_dynamic = jax.lax.scan(body, carry0, xs, reverse=True)
    return g_method, g_fn, g_s0, g_dynamic, g_tied


@_reconstructing.def_bwd
def _reconstructing_bwd(s1, grad_s1, perturbed, diff, static, t0, h, num_steps, per_step_args):
    del perturbed
    method, fn, _, dynamic, tied = diff
    g1 = jtu.tree_map(
        lambda g, s: jnp.zeros_like(s) if g is None else g, grad_s1, s1, is_leaf=lambda x: x is None
    )
    arrays, rest = eqx.partition((method, fn, s1, g1, dynamic, tied, t0, h), eqx.is_array)

    def plain(arrays):
        method, fn, s1, g1, dynamic, tied, t0, h = eqx.combine(arrays, rest)
        return _backward(method, fn, s1, g1, dynamic, tied, static, t0, h, num_steps, per_step_args)

    # Under `vmap` over examples with shared weights, JAX would batch this backward pass as a
    # black box: every example would form its own per-step weight cotangents (batch x depth x
    # weights of memory), summed only at the end. The rule below runs it once on the batch
    # instead, so each step's VJP sums the weight cotangents over the batch, as autodiff of a
    # batched matmul does.
    batch_aware = jax.custom_batching.custom_vmap(plain)

    @batch_aware.def_vmap
    def _rule(axis_size, in_batched, arrays):
        (in_b,) = in_batched
        method_b, fn_b, s1_b, g1_b, dyn_b, tied_b, t0_b, h_b = in_b
        if any(jtu.tree_leaves((method_b, fn_b, dyn_b, tied_b, t0_b, h_b))):
            # batched weights (e.g. an ensemble): per-example backward passes, summed by JAX
            in_axes = jtu.tree_map(lambda b: 0 if b else None, in_b)
            out = jax.vmap(plain, in_axes=(in_axes,))(arrays)
            return out, jtu.tree_map(lambda _: True, out)
        method, fn, s1, g1, dynamic, tied, t0, h = eqx.combine(arrays, rest)

        def batched(leaf, b):
            return leaf if b else jnp.broadcast_to(leaf, (axis_size,) + leaf.shape)

        s1 = jtu.tree_map(batched, s1, s1_b)
        g1 = jtu.tree_map(batched, g1, g1_b)
        g_method, g_fn, g_s0, g_dynamic, g_tied = _backward(
            method, _PerExample(fn), s1, g1, dynamic, tied, static, t0, h, num_steps, per_step_args
        )
        out = (g_method, g_fn.fn, g_s0, g_dynamic, g_tied)
        flags = jtu.tree_map(lambda _: False, out)
        return out, (flags[0], flags[1], jtu.tree_map(lambda _: True, g_s0), flags[3], flags[4])

    return batch_aware(arrays)


class _PerExample(eqx.Module):
    """A field applied to a batch of states, one example at a time (shared args)."""

    fn: Any

    def __call__(self, t, y, args):
        return jax.vmap(self.fn, in_axes=(None, 0, None))(t, y, args)


def _prepare(y, t0, t1, num_steps, args, per_step_args):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive Python int, got {num_steps!r}.")
    dtype = _tree.real_dtype(y)
    t0 = jnp.asarray(t0, dtype)
    h = (jnp.asarray(t1, dtype) - t0) / num_steps
    return dtype, t0, h, _split_args(args, per_step_args, num_steps)


def reversible_integrate(
    f,
    y0: Y,
    t0: RealScalarLike,
    t1: RealScalarLike,
    num_steps: int,
    args: Args = None,
    *,
    method="momentum",
    per_step_args: bool = False,
    adjoint: str = "reconstruct",
    save_trajectory: bool = False,
    return_state: bool = False,
):
    """`num_steps` equal steps of a reversible `method` for the field ``f(t, y, args)`` from `t0`
    to `t1`, as one `lax.scan`, differentiated by rebuilding the states backwards.

    **Arguments:** `f`, `y0`, `t0`, `t1`, `num_steps`, `args`, `per_step_args` as in
    [`resode.integrate`][] (with `per_step_args` each step has its own weights: an untied
    stack), and

    - `method`: a name in [`REVERSIBLE_METHODS`][] or an [`AbstractReversibleMethod`][] object
      (e.g. ``Momentum(gamma=0.5)``).
    - `adjoint`: one of [`ADJOINTS`][]: ``"reconstruct"`` (default: reverse-mode memory flat in
      depth; one inverse step and one step's VJP per step in the backward pass), ``"store"`` or
      ``"checkpoint"`` (ordinary autodiff, for reference and comparison).
    - `save_trajectory`: return ``(ts, ys)``, the output part of every state (``num_steps + 1``
      of them, from `y0`); differentiated by storing.
    - `return_state`: return the whole final state (e.g. position and velocity) instead of its
      output part, for [`reversible_rebuild`][].

    Arrays in `args`, arrays `f` closes over, array fields of `method` and `y0` all get
    gradients (`t0` and `t1` do not, with ``"reconstruct"``). Works under `jit`, `vmap` and
    `grad`; under `vmap` over states with shared weights the reconstructing solve runs once on
    the whole batch (its backward pass then sums weight cotangents over the batch step by step).
    Second derivatives through ``"reconstruct"``: forward-over-reverse (`jax.hessian`,
    Hessian-vector products by `jax.jvp` of `jax.grad`) works; reverse-over-reverse (`jax.grad`
    of `jax.grad`) does not (the backward pass carries a batching rule that reverse mode cannot
    differentiate): use ``"store"`` for it.

    **Returns:** `y1` (or the final state with `return_state`), or ``(ts, ys)``.
    """
    if adjoint not in ADJOINTS:
        raise ValueError(
            f"Unknown adjoint {adjoint!r} for reversible_integrate. Valid: {', '.join(ADJOINTS)}."
        )
    method = resolve_method(method)
    y0 = jtu.tree_map(jnp.asarray, y0)
    dtype, t0, h, args3 = _prepare(y0, t0, t1, num_steps, args, per_step_args)
    dynamic, static, tied = args3
    a0 = _args_at(static, tied, per_step_args, jtu.tree_map(lambda a: a[0], dynamic))
    s0 = method.init(f, t0, y0, a0)
    if save_trajectory or adjoint != "reconstruct":
        s1, ys = _scan_steps(
            method, f, s0, args3, t0, h, num_steps, per_step_args, save_trajectory,
            adjoint == "checkpoint",
        )  # fmt: skip
        if save_trajectory:
            ts = t0 + h * jnp.arange(num_steps + 1, dtype=dtype)
            ys = jtu.tree_map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
            return ts, ys
    else:
        fn = eqx.filter_closure_convert(f, t0, y0, a0)
        diff = (method, fn, s0, dynamic, tied)
        s1 = _reconstructing(diff, static, t0, h, num_steps, per_step_args)
    return s1 if return_state else method.output(s1)


def reversible_rebuild(
    f,
    s1: State,
    t0: RealScalarLike,
    t1: RealScalarLike,
    num_steps: int,
    args: Args = None,
    *,
    method="momentum",
    per_step_args: bool = False,
) -> State:
    """The initial state rebuilt from the final one `s1` (from ``reversible_integrate(...,
    return_state=True)`` with the same arguments) by `num_steps` inverse steps: exactly what the
    backward pass does. Comparing it with ``method.init(f, t0, y0, args)`` measures the
    reconstruction error in the working precision."""
    method = resolve_method(method)
    _, t0, h, args3 = _prepare(method.output(s1), t0, t1, num_steps, args, per_step_args)
    dynamic, static, tied = args3

    def body(s_next, x):
        k, a_k, a_prev = x
        a = _args_at(static, tied, per_step_args, a_k)
        prev = _args_at(static, tied, per_step_args, a_prev)
        return method.inverse(f, t0 + k.astype(h.dtype) * h, s_next, h, a, prev), None

    xs = (jnp.arange(num_steps, dtype=jnp.int32), dynamic, _previous(dynamic))
    return jax.lax.scan(body, s1, xs, reverse=True)[0]
