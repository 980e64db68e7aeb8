"""The residual scale alpha in y = x + alpha F(x): two identities and one claim about training.

Exact (float64, for every alpha): the gradient of a loss with respect to alpha is
(grad_y L)^T F(x), and the eigenvalues of the block's Jacobian I + alpha J_F are 1 + alpha lambda(J_F).
Empirical (over seeds): untied ResNets (digits, `depth` blocks y + alpha f_k(y), h = 1) are trained
at each alpha; at large alpha the loss gradients of consecutive blocks are claimed to point against
each other (cosine below 0).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resode.config import ConfigError
from resode.data import load
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fit_config,
    fmt_spread,
    plot_series,
    seed_list,
    spread,
    to_float64,
)
from resode.nn import Classifier, MLPField, ResidualStack, Stem
from resode.train import Trainer, fit

CLAIM = (
    "For y = x + alpha F(x): dL/dalpha = (grad_y L)^T F(x) and eig(I + alpha J_F) = 1 + alpha "
    "lambda(J_F) exactly; at large alpha the gradients of consecutive blocks turn against each "
    "other (cosine below 0)."
)
SOURCE = "principles.md: the scale alpha, dL/dalpha = (grad_y L)^T F(x), anti-aligned gradients"
KEY_FIGURE = "consecutive_grad_cosine"


@dataclasses.dataclass
class Config:
    alphas: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.5, 1.0, 2.0, 4.0])
    seed: int = 0
    num_seeds: int = 3
    depth: int = 8  # blocks of the trained ResNets
    width: int = 64
    steps: int = 300  # training steps per (alpha, seed)
    lr: float = 1e-3
    data: str = "digits"


QUICK = {"alphas": [0.5, 4.0], "num_seeds": 2, "depth": 3, "width": 16, "steps": 20}


def validate(cfg: Config) -> None:
    if not cfg.alphas:
        raise ConfigError("alphas: must be a non-empty list of numbers.")
    for key in ("num_seeds", "depth", "width", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")
    if cfg.data not in ("digits", "mnist1d"):
        raise ConfigError(f"data: {cfg.data!r} is not allowed; choose one of: digits, mnist1d.")


def _identities(alpha: float, width: int, key) -> dict:
    """dL/dalpha against (grad_y L)^T F(x), and the eigenvalue map, for one alpha (float64)."""
    k_f, k_x, k_t = jax.random.split(key, 3)
    block = to_float64(
        ResidualStack(
            lambda k: MLPField(width, width, key=k), 1, alpha=alpha, learn_alpha=True, key=k_f
        )
    )
    block = eqx.tree_at(lambda b: b.alpha, block, jnp.asarray(alpha, jnp.float64))
    x = jax.random.normal(k_x, (width,), jnp.float64)
    target = jax.random.normal(k_t, (width,), jnp.float64)
    field = jax.tree_util.tree_map(lambda a: a[0] if eqx.is_array(a) else a, block.field)
    F = lambda z: field(0.0, z)

    def loss(b):
        y = b(x, inference=True)[0]
        return 0.5 * jnp.sum((y - target) ** 2)

    @jax.jit
    def measure(b, x):
        grad_alpha = jax.grad(loss)(b).alpha
        y = b(x, inference=True)[0]
        formula = jnp.dot(y - target, F(x))
        return (
            grad_alpha,
            formula,
            jax.jacfwd(F)(x),
            jax.jacfwd(lambda z: b(z, inference=True)[0])(x),
        )

    grad_alpha, formula, jf, jblock = measure(block, x)
    d_err = float(jnp.abs(grad_alpha - formula) / jnp.maximum(jnp.abs(formula), 1e-300))
    jf, jblock = np.asarray(jf), np.asarray(jblock)
    lam, vr = np.linalg.eig(jf)
    measured = np.linalg.eigvals(jblock)
    predicted = 1 + alpha * lam
    dist = np.abs(measured[:, None] - predicted[None, :])
    hausdorff = max(dist.min(1).max(), dist.min(0).max())
    # Rounding allowance from the eigenvalues' condition numbers (non-normal matrices).
    vl = np.linalg.inv(vr).conj().T
    kappa = (
        np.linalg.norm(vl, axis=0)
        * np.linalg.norm(vr, axis=0)
        / np.abs(np.sum(vl.conj() * vr, axis=0))
    )
    tol = 1e3 * np.finfo(np.float64).eps * np.linalg.norm(jblock, 2) * kappa.max()
    return {"dalpha": d_err, "eigen": float(hausdorff), "eigen_tol": float(tol)}


def _model(cfg: Config, data, alpha: float, key):
    k_stem, k_body, k_head = jax.random.split(key, 3)
    stem = Stem("mlp", data.input_shape, cfg.width, key=k_stem)
    body = ResidualStack(
        lambda k: MLPField(cfg.width, cfg.width, key=k),
        cfg.depth,
        t1=float(cfg.depth),  # h = 1: block k is y + alpha f_k(y)
        alpha=alpha,
        key=k_body,
    )
    head = eqx.nn.Linear(cfg.width, data.num_classes, key=k_head)
    return Classifier(stem, body, head, "residual")


@eqx.filter_jit
def _cosines(model, x, y):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        logits = jax.vmap(lambda xi: m(xi, inference=True)[0])(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    grads = jax.grad(loss)(params).body.field
    leaves = [g.reshape(g.shape[0], -1) for g in jax.tree_util.tree_leaves(grads)]
    g = jnp.concatenate(leaves, axis=1)
    norms = jnp.linalg.norm(g, axis=1)
    return jnp.mean(jnp.sum(g[:-1] * g[1:], axis=1) / (norms[:-1] * norms[1:]))


def _consecutive_cosine(model, x, y) -> float:
    """Mean over k of cos(grad of block k, grad of block k + 1) of the loss on (x, y)."""
    return float(_cosines(model, x, y))


def run(cfg: Config, ctx) -> Result:
    alphas = [float(a) for a in cfg.alphas]
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    with jax.enable_x64(True):
        idents = [
            _identities(a, 16, jax.random.PRNGKey(cfg.seed + i)) for i, a in enumerate(alphas)
        ]
    eps = np.finfo(np.float64).eps
    dalpha_err = max(r["dalpha"] for r in idents)
    eigen_excess = max(r["eigen"] - r["eigen_tol"] for r in idents)
    checks = [
        exact_check(
            "dalpha_identity_error",
            "dL/dalpha equals (grad_y L)^T F(x) (largest relative difference over the alphas)",
            measured=dalpha_err,
            expected=0.0,
            tolerance=1e3 * eps,
        ),
        exact_check(
            "eigen_identity_error",
            "the eigenvalues of I + alpha J_F are 1 + alpha lambda(J_F) (largest matching distance "
            "minus its rounding allowance from the eigenvalue condition numbers)",
            measured=eigen_excess,
            expected=0.0,
            tolerance=0.0,
            compare="le",
        ),
    ]

    data = load(cfg.data)
    base = fit_config(
        cfg.steps,
        cfg.lr,
        f"data.name={cfg.data}",
        "train.steps_per_call=50",
        "train.grad_clip=null",
    )
    n_probe = min(512, data.x_train.shape[0])
    xp, yp = jnp.asarray(data.x_train[:n_probe]), jnp.asarray(data.y_train[:n_probe])
    cos_end = np.full((len(seeds), len(alphas)), np.nan)
    cos_init = np.full((len(seeds), len(alphas)), np.nan)
    acc = np.full((len(seeds), len(alphas)), np.nan)
    final_loss = np.full((len(seeds), len(alphas)), np.nan)
    diverged = np.zeros((len(seeds), len(alphas)), bool)
    for j, a in enumerate(alphas):
        trainer = None  # one Trainer per alpha: its compiled calls serve every seed
        make = eqx.filter_jit(lambda key, a=a: _model(cfg, data, a, key))
        for i, s in enumerate(seeds):
            cfg_s = dataclasses.replace(base, seed=s)
            model = make(jax.random.PRNGKey(s))
            if trainer is None:
                trainer = Trainer(cfg_s, data, model=model)
            cos_init[i, j] = _consecutive_cosine(model, xp, yp)
            result = fit(cfg_s, data, model=model, trainer=trainer)
            diverged[i, j] = result.diverged
            final_loss[i, j] = float(np.mean(result.history["loss"][-20:]))
            acc[i, j] = result.evaluation["test_accuracy"]
            if not result.diverged:
                cos_end[i, j] = _consecutive_cosine(result.model, xp, yp)
            ctx.say(
                f"  alpha={a:g} seed={s}: test acc {acc[i, j]:.3f}, grad cosine "
                f"{cos_init[i, j]:+.3f} -> {cos_end[i, j]:+.3f}"
            )
    mean_end = np.nanmean(cos_end, axis=0)
    top = int(np.argmax(alphas))
    held = bool(mean_end[top] < 0)
    checks.append(
        empirical_check(
            "anti_aligned_at_large_alpha",
            f"after training, consecutive blocks' gradients point against each other at the largest "
            f"alpha ({alphas[top]:g}): mean cosine below 0",
            measured=float(mean_end[top]),
            expected="< 0",
            holds=held,
            detail="mean cosine per alpha after training: "
            + ", ".join(
                f"alpha={a:g}: {fmt_spread(spread(cos_end[:, j][~np.isnan(cos_end[:, j])]), '.3f')}"
                if np.any(~np.isnan(cos_end[:, j]))
                else f"alpha={a:g}: diverged"
                for j, a in enumerate(alphas)
            ),
        )
    )
    figures = {
        "alphas": alphas,
        "dalpha_identity_error": dalpha_err,
        "eigen_identity_error": max(r["eigen"] for r in idents),
        "eigen_rounding_allowance": [r["eigen_tol"] for r in idents],
        "consecutive_grad_cosine": [float(v) for v in mean_end],
        "consecutive_grad_cosine_spread": [
            spread(cos_end[:, j][~np.isnan(cos_end[:, j])])
            if np.any(~np.isnan(cos_end[:, j]))
            else None
            for j in range(len(alphas))
        ],
        "consecutive_grad_cosine_init": [float(v) for v in np.mean(cos_init, 0)],
        "test_accuracy": [spread(acc[:, j]) for j in range(len(alphas))],
        "final_train_loss": [spread(final_loss[:, j]) for j in range(len(alphas))],
        "diverged": [int(diverged[:, j].sum()) for j in range(len(alphas))],
        "seeds": seeds,
    }
    plots = [
        plot_series(
            ctx.plots / "grad_cosine_vs_alpha.png",
            alphas,
            {"after training": cos_end, "at initialisation": cos_init},
            xlabel="alpha",
            ylabel="cos(grad block k, grad block k+1)",
            title=f"{cfg.data}, depth {cfg.depth}, {len(seeds)} seeds",
            logx=all(a > 0 for a in alphas),
            reference={"0": np.zeros(len(alphas))},
        ),
        plot_series(
            ctx.plots / "accuracy_vs_alpha.png",
            alphas,
            {"test accuracy": acc},
            xlabel="alpha",
            ylabel="test accuracy",
            logx=all(a > 0 for a in alphas),
        ),
    ]
    rows = [
        "| alpha | grad cosine at init | after training | test accuracy | diverged |",
        "|---|---|---|---|---|",
    ]
    for j, a in enumerate(alphas):
        ok = ~np.isnan(cos_end[:, j])
        rows.append(
            f"| {a:g} | {fmt_spread(spread(cos_init[:, j]))} | "
            f"{fmt_spread(spread(cos_end[ok, j])) if ok.any() else '-'} | "
            f"{fmt_spread(spread(acc[:, j]))} | {int(diverged[:, j].sum())}/{len(seeds)} |"
        )
    report = (
        "## What was measured\n\n"
        f"Identities on one MLP block (width 16, float64) at each alpha: dL/dalpha off by "
        f"{dalpha_err:.3g} (relative); eigenvalues off by at most "
        f"{max(r['eigen'] for r in idents):.3g}. Training: {cfg.data}, untied Euler ResNet of "
        f"{cfg.depth} blocks y + alpha f_k(y) (h = 1), width {cfg.width}, {cfg.steps} Adam steps at "
        f"lr {cfg.lr}, no clipping, seeds {seeds}. Gradient cosines on {n_probe} training "
        "examples.\n\n" + "\n".join(rows) + "\n"
    )
    return Result(checks, figures, report, plots)
