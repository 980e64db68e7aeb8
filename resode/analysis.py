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

from .nn import (
    DEQ,
    AdaptedField,
    ConvField,
    DissipativeField,
    GraphField,
    MLPField,
    ResidualStack,
    conv_symbol_norm,
)
from .nn._spectral import conv_grid, vmap_leading
from .schemes import Scheme, get_scheme, stability_function
from .stepping import step

__all__ = [
    "spectral_norm",
    "jacobian_eigenvalues",
    "stability_plot",
    "lipschitz_bound",
    "lipschitz_constant",
    "one_sided_lipschitz",
    "step_lipschitz_bound",
    "stack_lipschitz_bound",
    "gradient_flow",
    "gradient_fidelity",
    "segmentation_scores",
    "label_boundaries",
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


def lipschitz_constant(field, *, spatial_shape=None, t_max: float | None = None) -> Array:
    r"""A certified bound K on the Lipschitz constant of ``y -> f(t, y, args)`` (any t, args).

    - `MLPField` (1-Lipschitz activation): the product of its layers' exact spectral norms, as
      the field uses them (spectrally normalised ones included, whichever `spectral_method`).
    - `ConvField` (1-Lipschitz activation): the product of its two convolutions' Fourier-symbol
      norms (Sedghi et al. 2019), which bound the zero-padded convolutions on states of
      `spatial_shape` (default: the field's `spectral_shape`).
    - `GraphField`: $\|L\|_2 \|W\|_2$ ($\|I - L\|_2 \|W\|_2$ with the adjacency operator;
      its activation, if any, 1-Lipschitz), times $\max(1, \max_j |1 + t_{max} c_j|)$ when
      time-dependent (`t_max`, the largest time it is called at, is then required).
    - `DissipativeField`: $\|W\|_2^2 + m$.
    - `AdaptedField`: the sum of its base's and its adapter's constants.

    For a stacked (untied) field, one bound per step (leading axis). Other fields: a `TypeError`
    (estimate K locally with [`spectral_norm`][] instead).
    """
    if isinstance(field, AdaptedField):
        kw = dict(spatial_shape=spatial_shape, t_max=t_max)
        return lipschitz_constant(field.base, **kw) + lipschitz_constant(field.adapter, **kw)
    if isinstance(field, MLPField):
        _check_one_lipschitz(field.activation)
        K = 1.0
        for w in field.weights():  # spectrally normalised when the field has a bound
            K = K * _matrix_norm(w)
        return jnp.asarray(K)
    if isinstance(field, ConvField):
        _check_one_lipschitz(field.activation)
        shape = field.spectral_shape if spatial_shape is None else tuple(spatial_shape)
        if shape is None:
            raise ValueError(
                "lipschitz_constant: a ConvField without spectral_shape needs `spatial_shape` "
                "(the state's spatial sizes)."
            )
        nd = field.conv_in.num_spatial_dims
        extra = field.conv_in.weight.ndim - 2 - nd

        def one(ws):
            grids = [conv_grid(shape, w.shape[2:]) for w in ws]
            return conv_symbol_norm(ws[0], grids[0]) * conv_symbol_norm(ws[1], grids[1])

        return vmap_leading(one, extra)(field.kernels())
    if isinstance(field, GraphField):
        if field.activation is not None:
            _check_one_lipschitz(field.activation)
        op = jax.lax.stop_gradient(field.laplacian)
        if field.operator == "adjacency":
            op = jnp.eye(op.shape[-1], dtype=op.dtype) - op
        K = _matrix_norm(op) * _matrix_norm(field.weight)
        if field.time_dependent:
            if t_max is None:
                raise ValueError(
                    "lipschitz_constant: a time-dependent GraphField needs `t_max` (its scale "
                    "1 + t c depends on t)."
                )
            scale = jnp.max(jnp.abs(1.0 + t_max * field.time_scale), axis=-1)
            K = K * jnp.maximum(1.0, scale)
        return K
    if isinstance(field, DissipativeField):
        return _matrix_norm(field.weight) ** 2 + field.margin
    raise TypeError(
        f"lipschitz_constant supports MLPField, ConvField, GraphField, DissipativeField and "
        f"AdaptedField, got {type(field).__name__}; use spectral_norm for a local estimate."
    )


def one_sided_lipschitz(field, **kwargs) -> Array | None:
    r"""A certified bound ν with $\langle f(a) - f(b), a - b\rangle \le \nu \|a - b\|^2$, or
    None when the field's structure gives none better than its Lipschitz constant.

    `DissipativeField`: $-m$. `AdaptedField`: the base's ν plus the adapter's Lipschitz constant
    (`kwargs` go to [`lipschitz_constant`][]).
    """
    if isinstance(field, DissipativeField):
        return jnp.full(jnp.shape(field.weight)[:-2], -field.margin)
    if isinstance(field, AdaptedField):
        nu = one_sided_lipschitz(field.base, **kwargs)
        return None if nu is None else nu + lipschitz_constant(field.adapter, **kwargs)
    return None


def step_lipschitz_bound(scheme, h, K, nu=None, *, symmetric: bool = False) -> Array:
    r"""A certified bound on the Lipschitz constant of one step of `scheme` with step `h` > 0,
    for a field that is K-Lipschitz (and, when `nu` is given, one-sided ν-Lipschitz).

    Every applicable bound is computed; the smallest is returned (`inf`: none applies):

    - explicit schemes: $1 + hK\sum_i |b_i| L_i$ with stage bounds
      $L_i = 1 + hK\sum_{j<i}|a_{ij}| L_j$ (for Euler $1 + hK$, for RK4 the degree-4 Taylor
      polynomial of $e^{hK}$); with `symmetric` (the field's Jacobian is symmetric with
      eigenvalues in $[-K, \nu]$, e.g. a [`resode.nn.DissipativeField`][]) Euler also has
      $\max(|1 - hK|, |1 + h\nu|)$;
    - implicit schemes: $1 + hK\sum_i|b_i| / (1 - hK\|A\|_\infty)$ while
      $hK\|A\|_\infty < 1$ (the stage equations then have one solution);
    - backward Euler with $h\nu < 1$: $1 / (1 - h\nu)$;
    - algebraically stable schemes ([`resode.ButcherTableau.algebraically_stable`][]) with
      $\nu \le 0$: 1 (B-stability).

    The bounds are for the exact step: an implicit step solved to a tolerance is within that
    tolerance of it. `h`, `K`, `nu` may be arrays (one per step).
    """
    tab = get_scheme(scheme).tableau
    a, b = np.abs(tab.a), np.abs(tab.b)
    hK = jnp.asarray(h) * jnp.asarray(K)
    if tab.explicit:
        L = []
        for i in range(tab.num_stages):
            L.append(1.0 + hK * sum(a[i, j] * L[j] for j in range(i) if a[i, j]))
        bounds = [1.0 + hK * sum(b[i] * L[i] for i in range(tab.num_stages) if b[i])]
        if symmetric and nu is not None and tab.num_stages == 1:
            hnu = jnp.asarray(h) * jnp.asarray(nu)
            bounds.append(jnp.maximum(jnp.abs(1.0 - hK), jnp.abs(1.0 + hnu)))
    else:
        amax = float(a.sum(axis=1).max())
        ok = hK * amax < 1.0
        bounds = [jnp.where(ok, 1.0 + hK * b.sum() / jnp.where(ok, 1.0 - hK * amax, 1.0), jnp.inf)]
    if nu is not None and tab.implicit:
        hnu = jnp.asarray(h) * jnp.asarray(nu)
        if tab.num_stages == 1 and tab.a[0, 0] == 1.0 and tab.b[0] == 1.0:  # backward Euler
            ok = hnu < 1.0
            bounds.append(jnp.where(ok, 1.0 / jnp.where(ok, 1.0 - hnu, 1.0), jnp.inf))
        if tab.algebraically_stable:
            bounds.append(jnp.where(hnu <= 0.0, 1.0, jnp.inf))
    out = bounds[0]
    for extra in bounds[1:]:
        out = jnp.minimum(out, extra)
    return jnp.asarray(out)


def stack_lipschitz_bound(stack: ResidualStack, *, spatial_shape=None) -> Array:
    r"""A certified bound on the Lipschitz constant of a whole [`resode.nn.ResidualStack`][]
    ``y -> stack(y, args, inference=True)``: the product of its steps' bounds.

    Step k is ``step(y)`` of the stack's scheme over the field ``s_k f_k`` with
    ``s_k = alpha p_k`` (p_k: stochastic depth's survival probability at evaluation) and
    h = t1 / num_steps, bounded by [`step_lipschitz_bound`][] from the field's
    [`lipschitz_constant`][] (``|s_k| K``) and [`one_sided_lipschitz`][] (``s_k ν`` for
    ``s_k >= 0``). A plain stack (``skip=False``) multiplies ``|s_k| K``. So an explicit ResNet
    gets $\prod_k (1 + h|s_k|K_k)$, and a backward-Euler stack over a
    [`resode.nn.DissipativeField`][] of margin m gets $(1 + hm\,s)^{-n} \le 1$.
    Reversible stacks are refused (a `ValueError`).
    """
    if stack.is_reversible:
        raise ValueError("stack_lipschitz_bound: reversible stacks are not certified.")
    h = stack.t1 / stack.num_steps
    K = lipschitz_constant(stack.field, spatial_shape=spatial_shape, t_max=stack.t1)
    nu = one_sided_lipschitz(stack.field, spatial_shape=spatial_shape, t_max=stack.t1)
    scales = jnp.asarray(stack.alpha) * stack.survival()
    K = jnp.broadcast_to(jnp.abs(scales) * K, (stack.num_steps,))
    if not stack.skip:
        return jnp.prod(K)
    if nu is not None:
        nu = jnp.where(scales >= 0, scales * nu, K)
    per_step = step_lipschitz_bound(
        stack.scheme, h, K, nu, symmetric=isinstance(stack.field, DissipativeField)
    )
    return jnp.prod(jnp.broadcast_to(per_step, (stack.num_steps,)))


def lipschitz_bound(field, h: float, *, spatial_shape=None) -> Array:
    r"""Upper bound $1 + hK$ on the Lipschitz constant of an Euler residual step ``y + h f(y)``.

    K is [`lipschitz_constant`][] of the field (for a stacked, untied field, one bound per step;
    `spatial_shape`: the state's spatial sizes, for a conv field without `spectral_shape`).
    For other schemes, one-sided bounds and whole stacks see [`step_lipschitz_bound`][] and
    [`stack_lipschitz_bound`][].
    """
    return 1.0 + h * lipschitz_constant(field, spatial_shape=spatial_shape)


def _check_one_lipschitz(activation) -> None:
    if activation not in _ONE_LIPSCHITZ:
        raise ValueError(
            f"lipschitz_constant: activation {activation} is not known to be 1-Lipschitz."
        )


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


def label_boundaries(labels) -> np.ndarray:
    """Pixels of label maps ``(..., height, width)`` whose label differs from one of their four
    neighbours (True), the fine detail a segmentation has to place."""
    y = np.asarray(labels)
    edge = np.zeros(y.shape, bool)
    vertical = y[..., 1:, :] != y[..., :-1, :]
    horizontal = y[..., :, 1:] != y[..., :, :-1]
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    return edge


def segmentation_scores(pred, labels, num_classes: int, *, ignore=(0,)) -> dict:
    """Scores of per-pixel class predictions `pred` against `labels` (integer maps of the same
    shape, e.g. ``(examples, height, width)``; labels below 0 are not scored).

    Returns ``iou`` (per class: intersection over union, pooled over all pixels; None for a
    class absent from both), ``mean_iou`` (over the classes not in `ignore`, default the
    background 0, that occur), ``pixel_accuracy``, and ``boundary_accuracy`` (accuracy on the
    pixels of [`label_boundaries`][]: does the prediction place the edges).
    """
    p, y = np.asarray(pred), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(
            f"segmentation_scores: `pred` {p.shape} and `labels` {y.shape} must have one shape."
        )
    valid = y >= 0
    iou = []
    for c in range(num_classes):
        inter = np.sum((p == c) & (y == c) & valid)
        union = np.sum(((p == c) | (y == c)) & valid)
        iou.append(float(inter / union) if union else None)
    scored = [v for c, v in enumerate(iou) if c not in ignore and v is not None]
    edge = label_boundaries(y) & valid
    return {
        "iou": iou,
        "mean_iou": float(np.mean(scored)) if scored else None,
        "pixel_accuracy": float(np.sum((p == y) & valid) / max(int(np.sum(valid)), 1)),
        "boundary_accuracy": (
            float(np.sum((p == y) & edge) / np.sum(edge)) if np.any(edge) else None
        ),
    }
