"""Stability and gradient-flow analysis of vector fields, schemes and stacks.

Host-side helpers for understanding a trained (or initial) model: how stiff is the field where the
data lives, does the scheme's stability region cover it, how Lipschitz is a residual step, and how
do gradients flow through depth.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray
from matplotlib.figure import Figure

from .nn import DEQ, GraphField, MLPField, ResidualStack
from .schemes import Scheme, get_scheme, stability_function
from .stepping import step

__all__ = [
    "spectral_norm",
    "jacobian_eigenvalues",
    "stability_plot",
    "lipschitz_bound",
    "gradient_flow",
    "gradient_fidelity",
]

_ONE_LIPSCHITZ = {
    jax.nn.tanh,
    jax.nn.relu,
    jnp.tanh,
    jax.nn.leaky_relu,
    jax.nn.elu,
    jax.nn.softplus,
}


def _flat_linear(f, y):
    """(jvp, vjp) of f at y on flattened real vectors, plus the flat point."""
    flat, unravel = ravel_pytree(y)
    g = lambda v: ravel_pytree(f(unravel(v)))[0]
    _, jvp = jax.linearize(g, flat)
    vjp = jax.linear_transpose(jvp, flat)
    return jvp, (lambda w: vjp(w)[0]), flat


def spectral_norm(f, y, *, key: PRNGKeyArray, num_iters: int = 100) -> Array:
    r"""Largest singular value of $\partial f/\partial y$ at `y`, by power iteration on $J^\top J$.

    Each iteration costs one JVP and one VJP; no Jacobian is formed. `f` maps a state (any pytree
    of real arrays) to a state: close over `t` and `args`, e.g. ``lambda y: field(t, y, x)``.
    Jittable. Converges at the rate of the ratio of the two largest singular values squared.
    """
    jvp, vjp, flat = _flat_linear(f, y)
    v = jax.random.normal(key, flat.shape, flat.dtype)
    v = v / jnp.linalg.norm(v)

    def body(_, v):
        w = vjp(jvp(v))
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, num_iters, body, v)
    return jnp.linalg.norm(jvp(v))


def jacobian_eigenvalues(f, y, k: int | None = None) -> np.ndarray:
    """Eigenvalues of the (dense) Jacobian of `f` at `y`, largest real part first.

    Forms the Jacobian: meant for analysis of states up to a few thousand entries. Returns the
    leading `k` (all if None) as a complex NumPy array; multiply by h to place them in a scheme's
    stability region ([`stability_plot`][]).
    """
    flat, unravel = ravel_pytree(y)
    J = jax.jacfwd(lambda v: ravel_pytree(f(unravel(v)))[0])(flat)
    eig = np.linalg.eigvals(np.asarray(J, dtype=np.float64))
    eig = eig[np.argsort(-eig.real)]
    return eig if k is None else eig[:k]


def stability_plot(
    scheme: "str | Scheme",
    h_lambda=None,
    *,
    extent: tuple[float, float, float, float] | None = None,
    resolution: int = 400,
    ax=None,
) -> Figure:
    """The stability region ``{z : |R(z)| <= 1}`` of `scheme`, with points ``h * lambda``.

    Points inside the region (|R| <= 1) are drawn as dots, points outside as crosses. Returns a
    matplotlib `Figure` (nothing is shown; save it with ``fig.savefig(path)``). `extent` is
    ``(re_min, re_max, im_min, im_max)``; by default it covers the points and the unit disc.
    Pass a matplotlib `ax` to draw into an existing figure (its figure is returned).
    """
    scheme = get_scheme(scheme)
    pts = None if h_lambda is None else np.atleast_1d(np.asarray(h_lambda, dtype=np.complex128))
    if extent is None:
        re = [-4.0, 2.0] + ([] if pts is None else [pts.real.min() * 1.2, pts.real.max() * 1.2])
        im = [-3.0, 3.0] + ([] if pts is None else [pts.imag.min() * 1.2, pts.imag.max() * 1.2])
        extent = (min(re), max(re), min(im), max(im))
    x = np.linspace(extent[0], extent[1], resolution)
    yv = np.linspace(extent[2], extent[3], resolution)
    Z = x[None, :] + 1j * yv[:, None]
    R = np.abs(stability_function(scheme, Z))
    if ax is None:
        ax = Figure(figsize=(5, 4.5)).add_subplot()
    ax.contourf(x, yv, (R <= 1).astype(float), levels=[0.5, 1.5], colors=["#9ecae1"])
    ax.contour(x, yv, R, levels=[1.0], colors="#08519c", linewidths=1.0)
    ax.axhline(0, color="0.5", lw=0.5)
    ax.axvline(0, color="0.5", lw=0.5)
    if pts is not None:
        stable = np.abs(stability_function(scheme, pts)) <= 1
        ax.scatter(
            pts.real[stable], pts.imag[stable], s=12, c="#238b45", marker="o", label="stable"
        )
        ax.scatter(
            pts.real[~stable], pts.imag[~stable], s=20, c="#cb181d", marker="x", label="unstable"
        )
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("Re(h λ)")
    ax.set_ylabel("Im(h λ)")
    ax.set_title(f"{scheme.name}: |R(z)| ≤ 1 shaded")
    return ax.figure


def lipschitz_bound(field, h: float) -> Array:
    r"""Upper bound $1 + hK$ on the Lipschitz constant of an Euler residual step ``y + h f(y)``.

    K bounds the Lipschitz constant of the field: the product of the layers' spectral norms for an
    `MLPField` (with a 1-Lipschitz activation such as tanh or relu), $\|L\|_2\|W\|_2$ for a
    `GraphField`. For a stacked (untied) field, one bound per step. Other fields: estimate K
    locally with [`spectral_norm`][] instead.
    """
    if isinstance(field, MLPField):
        if field.activation not in _ONE_LIPSCHITZ:
            raise ValueError(
                f"lipschitz_bound: activation {field.activation} is not known to be 1-Lipschitz."
            )
        K = 1.0
        for w in field.weights():  # spectrally normalised when the field has a bound
            K = K * _matrix_norm(w)
    elif isinstance(field, GraphField):
        K = _matrix_norm(jax.lax.stop_gradient(field.laplacian)) * _matrix_norm(field.weight)
    else:
        raise TypeError(
            f"lipschitz_bound supports MLPField and GraphField, got {type(field).__name__}; "
            "use spectral_norm for a local estimate."
        )
    return 1.0 + h * K


def _matrix_norm(W):
    """Spectral norm of the last two axes (batched for stacked fields)."""
    return jnp.linalg.norm(W, ord=2, axis=(-2, -1))


def gradient_flow(stack: ResidualStack, y: Array, loss_fn, args=None) -> Array:
    r"""Norms $\|\partial L / \partial y_k\|$ of the loss gradient at every state of a stack.

    Returns an array of shape ``(num_steps + 1,)``: entry 0 is the stack's input (after
    augmentation), entry `num_steps` its output. `loss_fn` maps the stack's output to a scalar.
    The ratio of the first to the last entry shows whether gradients vanish or explode through
    depth. Evaluation mode (no stochastic depth). Computed with one trajectory and one reverse
    scan of step VJPs, so it costs about one backward pass. Plain stacks (``skip=False``) too:
    there the states are the blocks' outputs, which is what shows their gradients vanishing.
    """
    ys = stack.trajectory(y, args)
    fn, step_args = stack.step_function(args, inference=True, dtype=jnp.result_type(ys))
    h = stack.t1 / stack.num_steps
    g_last = jax.grad(loss_fn)(ys[-1])
    dynamic, static = eqx.partition(step_args, eqx.is_array)

    def back(g, xs):
        k, y_k, a = xs
        a = eqx.combine(a, static)
        if stack.skip:
            block = lambda z: step(fn, k * h, z, h, a, scheme=stack.scheme, root=stack.root)
        else:
            block = lambda z: fn(k * h, z, a)
        _, vjp = jax.vjp(block, y_k)
        (g_prev,) = vjp(g)
        return g_prev, jnp.linalg.norm(g_prev)

    ks = jnp.arange(stack.num_steps, dtype=jnp.result_type(ys))
    _, norms = jax.lax.scan(back, g_last, (ks, ys[:-1], dynamic), reverse=True)
    return jnp.concatenate([norms, jnp.linalg.norm(g_last)[None]])


def gradient_fidelity(deq: DEQ, xs: Array, loss_fn, adjoints=("jfb", "phantom")) -> dict:
    """How close approximate adjoints come to the exact gradient on a batch.

    For each adjoint in `adjoints`, the gradient of ``mean(loss_fn(z*(x)))`` over the batch `xs`
    with respect to the DEQ's field parameters is compared with the implicit (exact) one.

    **Returns:** ``{name: {"cosine": ..., "relative_error": ...}}`` (floats).
    """

    def grads(adjoint):
        model = DEQ(
            deq.field, solver=deq.solver, adjoint=adjoint, tol=deq.tol, max_steps=deq.max_steps
        )
        loss = lambda m: jnp.mean(jax.vmap(lambda x: loss_fn(m(x)[0]))(xs))
        g = eqx.filter_grad(loss)(model)
        return ravel_pytree(eqx.filter(g, eqx.is_inexact_array))[0]

    exact = grads("implicit")
    out = {}
    for name in adjoints:
        approx = grads(name)
        cosine = jnp.vdot(approx, exact) / (jnp.linalg.norm(approx) * jnp.linalg.norm(exact))
        rel = jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact)
        label = name if isinstance(name, str) else type(name).__name__
        out[label] = {"cosine": float(cosine), "relative_error": float(rel)}
    return out
