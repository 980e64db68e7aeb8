"""Robustness, calibration and domain shift: adversarial attacks (FGSM, PGD), calibration metrics
and the maximum mean discrepancy between two sets of features.

Pure functions on JAX arrays. The attacks take a per-example loss ``loss_fn(x, y) -> scalar`` and
differentiate it with respect to the input, so they work through any resode body (explicit,
implicit, DEQ, ODE): the gradient goes through the solvers with their own adjoints.
[`classifier_loss`][] builds that loss for a resode classifier.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

__all__ = [
    "NORMS",
    "calibration_bins",
    "classifier_loss",
    "expected_calibration_error",
    "fgsm",
    "maximum_mean_discrepancy",
    "pgd",
    "reliability_diagram",
]

NORMS = ("linf", "l2")
"""Threat models of the attacks: an L-infinity box or an L2 ball around the clean input."""


def classifier_loss(model, *, inference: bool = True) -> Callable[[Array, Array], Array]:
    """Cross-entropy of a resode classifier on one example: ``loss(x, y)`` with y an integer
    label. The model is called as ``model(x, inference=inference)`` and returns ``(logits,
    diagnostics)`` (every [`resode.nn.Classifier`][])."""

    def loss(x, y):
        logits, _ = model(x, inference=inference)
        return -jax.nn.log_softmax(logits)[y]

    return loss


def _check(norm: str, radius, steps: int) -> None:
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}. Valid: {', '.join(NORMS)}.")
    if not isinstance(radius, jax.core.Tracer) and not float(radius) >= 0:
        raise ValueError(f"`radius` must be >= 0, got {radius!r}.")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")


def _l2(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(v**2))


def _ascent(g: Array, norm: str) -> Array:
    """The steepest-ascent direction of unit norm for the threat model."""
    if norm == "linf":
        return jnp.sign(g)
    n = _l2(g)
    return jnp.where(n > 0, g / jnp.where(n > 0, n, 1.0), 0.0)


def _project(x: Array, x0: Array, radius, norm: str, bounds) -> Array:
    d = x - x0
    if norm == "linf":
        d = jnp.clip(d, -radius, radius)
    else:
        n = _l2(d)
        d = jnp.where(n > radius, d * (radius / jnp.where(n > 0, n, 1.0)), d)
    x = x0 + d
    if bounds is not None:
        x = jnp.clip(x, bounds[0], bounds[1])
    return x


def _random_start(key, x0, radius, norm):
    if norm == "linf":
        return x0 + jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0) * radius
    k1, k2 = jax.random.split(key)
    direction = jax.random.normal(k1, x0.shape, x0.dtype)
    direction = direction / jnp.maximum(_l2(direction), 1e-12)
    u = jax.random.uniform(k2, (), x0.dtype) ** (1.0 / x0.size)  # uniform in the ball
    return x0 + direction * radius * u


def pgd(
    loss_fn: Callable[[Array, Array], Array],
    x: Array,
    y: Array,
    *,
    radius,
    steps: int = 10,
    step_size=None,
    norm: str = "linf",
    random_start: bool = True,
    key: PRNGKeyArray | None = None,
    bounds: tuple[float, float] | None = None,
) -> Array:
    r"""Projected gradient ascent on the loss within a ball around each example (Madry et al.,
    ICLR 2018, "Towards deep learning models resistant to adversarial attacks").

    ``x_{k+1} = P(x_k + step_size * d_k)`` with ``d_k`` the sign of the input gradient (L∞) or
    the normalised gradient (L2), and P the projection onto the ball of `radius` around the clean
    input (then onto `bounds`, the valid input range, if given).

    **Arguments:**

    - `loss_fn`: ``loss_fn(x, y) -> scalar`` for one example (e.g. [`classifier_loss`][]).
    - `x`, `y`: a batch (leading axis) of inputs and targets; each example is attacked on its own
      (`jax.vmap`).
    - `radius`: the ball's radius (may be traced). `steps`: iterations (static).
    - `step_size`: default ``2.5 * radius / steps``.
    - `norm`: ``"linf"`` (default) or ``"l2"``.
    - `random_start`: start at a uniform point of the ball (needs `key`); else at x.
    - `bounds`: ``(low, high)`` clip of the adversarial input, or `None`.

    **Returns:** the adversarial batch, with ``||x_adv - x|| <= radius`` per example.
    """
    _check(norm, radius, steps)
    step_size = 2.5 * radius / steps if step_size is None else step_size
    if random_start and key is None:
        raise ValueError("pgd: `random_start=True` needs a `key`.")
    grad = jax.grad(loss_fn)

    def one(x0, y0, k):
        xk = x0 if k is None else _random_start(k, x0, radius, norm)
        xk = _project(xk, x0, radius, norm, bounds)

        def body(_, xk):
            g = grad(xk, y0)
            return _project(xk + step_size * _ascent(g, norm), x0, radius, norm, bounds)

        return jax.lax.fori_loop(0, steps, body, xk)

    keys = jax.random.split(key, x.shape[0]) if random_start else None  # None: no start noise
    return jax.vmap(one)(x, y, keys)


def fgsm(
    loss_fn: Callable[[Array, Array], Array],
    x: Array,
    y: Array,
    *,
    radius,
    norm: str = "linf",
    bounds: tuple[float, float] | None = None,
) -> Array:
    """The fast gradient sign method (Goodfellow et al., ICLR 2015): one step of size `radius`
    along the sign of the input gradient (L∞) or the normalised gradient (L2). The same as
    ``pgd(..., steps=1, step_size=radius, random_start=False)``."""
    return pgd(
        loss_fn,
        x,
        y,
        radius=radius,
        steps=1,
        step_size=radius,
        norm=norm,
        random_start=False,
        bounds=bounds,
    )


# --- calibration --------------------------------------------------------------------------------


def calibration_bins(logits, labels, *, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability-diagram data: examples binned by confidence (the largest softmax probability)
    into `num_bins` equal-width bins of [0, 1] (left-open, the first also holding 0).

    **Returns:** NumPy arrays ``edges`` (num_bins + 1), ``count``, ``confidence`` (mean
    confidence per bin, NaN when empty) and ``accuracy`` (fraction correct per bin, NaN when
    empty).
    """
    if not (isinstance(num_bins, int) and num_bins >= 1):
        raise ValueError(f"`num_bins` must be an integer >= 1, got {num_bins!r}.")
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"calibration: `logits` must be (examples, classes) and `labels` (examples,), got "
            f"{logits.shape} and {labels.shape}."
        )
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(idx, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, minlength=num_bins) / count
        accuracy = np.bincount(idx, correct, minlength=num_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(logits, labels, *, num_bins: int = 15) -> float:
    r"""Expected calibration error (Guo et al., ICML 2017): $\sum_b (n_b / N) |acc_b - conf_b|$
    over `num_bins` equal-width confidence bins (see [`calibration_bins`][]); 15 bins is the
    common choice."""
    bins = calibration_bins(logits, labels, num_bins=num_bins)
    n = bins["count"].sum()
    used = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float(np.sum(bins["count"][used] / n * gaps))


def reliability_diagram(logits, labels, *, num_bins: int = 15, ax=None, label: str | None = None):
    """The reliability diagram of a classifier's logits: accuracy against mean confidence per
    confidence bin ([`calibration_bins`][]; equal-width bins of [0, 1]), with the diagonal of
    perfect calibration, each bin's point sized by its count and the ECE in the legend.

    Returns a matplotlib `Figure` (nothing is shown; save it with ``fig.savefig(path)``). Pass
    `ax` to draw into existing axes (several models or shrink factors on one diagram, each with its
    `label`).
    """
    from matplotlib.figure import Figure

    bins = calibration_bins(logits, labels, num_bins=num_bins)
    ece = expected_calibration_error(logits, labels, num_bins=num_bins)
    if ax is None:
        ax = Figure(figsize=(4.6, 4.2)).add_subplot()
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    used = bins["count"] > 0
    sizes = 200.0 * bins["count"][used] / bins["count"].sum() + 8.0
    name = f"{label}: " if label else ""
    ax.plot(bins["confidence"][used], bins["accuracy"][used], "-", alpha=0.6)
    ax.scatter(
        bins["confidence"][used],
        bins["accuracy"][used],
        s=sizes,
        label=f"{name}ECE {ece:.3f} ({num_bins} bins)",
        color=ax.lines[-1].get_color(),
    )
    ax.set_xlim(0, 1.03)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (mean of the bin)")
    ax.set_ylabel("accuracy in the bin")
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure


# --- domain shift -------------------------------------------------------------------------------


def maximum_mean_discrepancy(a, b, *, kernel: str = "rbf", bandwidth: float | None = None):
    r"""Squared maximum mean discrepancy between two samples (Gretton et al., JMLR 2012):
    $\mathrm{MMD}^2 = \overline{k(a, a')} + \overline{k(b, b')} - 2\,\overline{k(a, b)}$, the
    biased (V-statistic) estimate, which is the squared distance between the samples' mean
    embeddings and so never negative.

    **Arguments:** `a` ``(n, d)``, `b` ``(m, d)`` (e.g. a classifier's
    [`resode.nn.Classifier.features`][] on two domains); `kernel` ``"rbf"``
    ($k = \exp(-\|u - v\|^2 / (2\sigma^2))$) or ``"linear"`` ($k = u \cdot v$, for which
    MMD² is exactly $\|\bar a - \bar b\|^2$); `bandwidth` σ of the rbf kernel (default: the
    median pairwise distance of the pooled samples, the median heuristic). Returns
    ``(mmd2, bandwidth)`` as floats (bandwidth NaN for the linear kernel); pass the same
    bandwidth to compare gaps before and after a change.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(
            f"maximum_mean_discrepancy: `a` and `b` must be non-empty (examples, features) with "
            f"the same features, got {a.shape} and {b.shape}."
        )
    if kernel == "linear":
        gram = lambda u, v: u @ v.T
        bandwidth = float("nan")
    elif kernel == "rbf":
        sq = lambda u, v: np.maximum(
            (u * u).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2 * u @ v.T, 0.0
        )
        if bandwidth is None:
            pooled = np.concatenate([a, b])
            d = np.sqrt(sq(pooled, pooled))[np.triu_indices(len(pooled), 1)]
            bandwidth = float(np.median(d)) if d.size else 1.0
        if not bandwidth > 0:
            raise ValueError(f"maximum_mean_discrepancy: `bandwidth` must be > 0, got {bandwidth}.")
        gram = lambda u, v: np.exp(-sq(u, v) / (2.0 * bandwidth**2))
    else:
        raise ValueError(
            f"maximum_mean_discrepancy: unknown kernel {kernel!r}. Valid: rbf, linear."
        )
    mmd2 = gram(a, a).mean() + gram(b, b).mean() - 2.0 * gram(a, b).mean()
    return float(max(mmd2, 0.0)), float(bandwidth)
