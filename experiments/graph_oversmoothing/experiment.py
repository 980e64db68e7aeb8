"""Over-smoothing in graph networks, and what a residual layer X - eta L X does about it.

The seed chapter (applications.md, graph neural networks) says that stacking graph layers drives
every node's features towards the same value (over-smoothing: the high-frequency components of the
graph signal are damped), and that the residual form X' = X - eta L X, whose identity path keeps
each node's own features, slows this. Setting: a stochastic block model (resode.data "sbm") with
its renormalised Laplacian L = I - D^-1/2 (A + I) D^-1/2 (eigenvalues in [0, 2)).

Exact: for X_{k+1} = (I - eta L) X_k the Dirichlet energy tr(X_k^T L X_k) equals
sum_i (1 - eta lambda_i)^(2k) lambda_i ||c_i||^2 (lambda_i, u_i: eigenpairs of L; c_i = u_i^T X_0),
measured by propagating the features against the formula, for eta and for plain propagation
(eta = 1, X' = (I - L) X, the GCN operator). Measured on this graph: the residual layers keep more
of the energy than plain propagation at every depth. Empirical (over seeds): trained residual GNNs
(X + eta tanh(-L X W_k)) keep their test accuracy as depth grows, plain ones (tanh((I - L) X W_k),
GCN layers without skips) lose it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from resode.config import ConfigError
from resode.data import load
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fit_seeds,
    fmt_spread,
    plot_series,
    require_at_least_one,
    seed_list,
    spread,
)
from resode.nn import normalized_laplacian

CLAIM = (
    "Residual graph layers X - eta L X keep node features apart: the Dirichlet energy decays as "
    "sum (1 - eta lambda)^(2k) lambda |c|^2, and deep residual GNNs keep their accuracy where "
    "plain ones over-smooth."
)
SOURCE = (
    "applications.md: graph neural networks, over-smoothing and the residual update X - eta L X; "
    "Kipf & Welling, ICLR 2017 (GCN propagation); Li, Han & Wu, AAAI 2018 (over-smoothing)"
)
KEY_FIGURE = "energy_error"
ACCURACY_SLACK = 0.05  # "keeps its accuracy": within this of the shallowest; "loses": more


@dataclasses.dataclass
class Config:
    depth: list = dataclasses.field(default_factory=lambda: [2, 4, 8, 16, 32])
    eta: float = 0.2  # residual step: X <- X + eta f(X)
    seed: int = 0
    num_seeds: int = 3
    width: int = 16
    steps: int = 300
    lr: float = 0.01
    graph_seed: int = 0  # the stochastic block model's own seed (graph, features, split)


QUICK = {"depth": [2, 8], "num_seeds": 1, "width": 8, "steps": 20}


def validate(cfg: Config) -> None:
    if not isinstance(cfg.depth, list) or len(cfg.depth) < 2:
        raise ConfigError(f"depth: must list at least two depths, got {cfg.depth!r}.")
    if any(not isinstance(d, int) or d < 1 for d in cfg.depth):
        raise ConfigError(f"depth: every depth must be an integer >= 1, got {cfg.depth!r}.")
    if not 0 < cfg.eta <= 1:
        raise ConfigError(f"eta: must be in (0, 1], got {cfg.eta}.")
    require_at_least_one(cfg, "num_seeds", "width", "steps")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")


def dirichlet_energy(L: np.ndarray, X: np.ndarray) -> float:
    """tr(X^T L X): the sum over edges of squared feature differences (normalised)."""
    return float(np.sum(X * (L @ X)))


def propagated_energies(L, X, eta, depths):
    """Dirichlet energy after k layers of X <- (I - eta L) X, for each k in `depths`."""
    out, Xk, k = {}, X.copy(), 0
    step = np.eye(L.shape[0]) - eta * L
    for d in sorted(depths):
        while k < d:
            Xk, k = step @ Xk, k + 1
        out[d] = dirichlet_energy(L, Xk)
    return out


def formula_energies(L, X, eta, depths):
    """sum_i (1 - eta lambda_i)^(2k) lambda_i ||c_i||^2 for each k in `depths`."""
    lam, U = np.linalg.eigh(L)
    c2 = np.sum((U.T @ X) ** 2, axis=1)
    return {d: float(np.sum((1 - eta * lam) ** (2 * d) * lam * c2)) for d in depths}


def _rayleigh(L, X) -> float:
    """Dirichlet energy per unit of squared norm: how rough the signal is (0: constant per
    connected component)."""
    return dirichlet_energy(L, X) / float(np.sum(X * X))


def run(cfg: Config, ctx) -> Result:
    depths = sorted(int(d) for d in cfg.depth)
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    data = load("sbm", seed=cfg.graph_seed)
    A = data.adjacency.astype(np.float64)
    L = np.asarray(normalized_laplacian(jnp.asarray(A + np.eye(A.shape[0]))), np.float64)
    X0 = data.x_train[0].astype(np.float64)
    E0 = dirichlet_energy(L, X0)

    energy_error, ratio = 0.0, {}
    for name, eta in (("residual", cfg.eta), ("plain", 1.0)):
        measured = propagated_energies(L, X0, eta, depths)
        formula = formula_energies(L, X0, eta, depths)
        for d in depths:
            # Relative to the input's energy: the energies fall by many orders of magnitude,
            # float64 rounding does not.
            energy_error = max(energy_error, abs(measured[d] - formula[d]) / E0)
        ratio[name] = [measured[d] / E0 for d in depths]
    more_energy = all(r > p for r, p in zip(ratio["residual"], ratio["plain"], strict=True))

    acc = {m: {d: [] for d in depths} for m in ("residual", "plain")}
    rough = {m: {d: [] for d in depths} for m in ("residual", "plain")}
    x = jnp.asarray(data.x_train[0])
    for d in depths:
        for m in ("residual", "plain"):
            kind = ["model.body.kind=residual", f"model.body.alpha={cfg.eta * d}"]
            if m == "plain":
                kind = ["model.body.kind=plain"]
            results = fit_seeds(
                data,
                seeds,
                cfg.steps,
                cfg.lr,
                "model.stem=graph",
                "data.batch_size=1",
                f"data.seed={cfg.graph_seed}",
                f"model.width={cfg.width}",
                f"model.body.num_steps={d}",
                f"train.steps_per_call={min(cfg.steps, 100)}",
                *kind,
            )
            for r in results:
                acc[m][d].append(float(r.evaluation["test_accuracy"]))
                model = r.model
                z0 = np.asarray(model.stem(x), np.float64)
                z = np.asarray(jax.jit(lambda v, m_=model: m_.features(v)[0])(x), np.float64)
                rough[m][d].append(_rayleigh(L, z) / _rayleigh(L, z0))
        ctx.say(
            f"  depth {d}: energy ratio residual {ratio['residual'][depths.index(d)]:.3g}, plain "
            f"{ratio['plain'][depths.index(d)]:.3g}; test accuracy residual "
            f"{fmt_spread(spread(acc['residual'][d]))}, plain {fmt_spread(spread(acc['plain'][d]))}"
        )
    mean = {m: {d: float(np.mean(acc[m][d])) for d in depths} for m in acc}
    lo, hi = depths[0], depths[-1]
    res_drop = mean["residual"][lo] - mean["residual"][hi]
    plain_drop = mean["plain"][lo] - mean["plain"][hi]
    checks = [
        exact_check(
            "energy_error",
            "the Dirichlet energy of (I - eta L)^k X equals sum_i (1 - eta lambda_i)^(2k) lambda_i "
            f"|c_i|^2 for eta = {cfg.eta:g} and eta = 1 at depths {depths} (largest difference "
            "relative to the input's energy, float64)",
            measured=energy_error,
            expected=0.0,
            tolerance=1e-10,
            compare="le",
        ),
        empirical_check(
            "residual_keeps_more_energy",
            f"on this graph, residual propagation (eta = {cfg.eta:g}) keeps a larger fraction of "
            "the features' Dirichlet energy than plain propagation (eta = 1) at every depth",
            measured={
                str(d): [r, p]
                for d, r, p in zip(depths, ratio["residual"], ratio["plain"], strict=True)
            },
            expected="residual ratio > plain ratio at every depth",
            holds=more_energy,
        ),
        empirical_check(
            "residual_keeps_accuracy",
            f"trained residual GNNs: mean test accuracy at depth {hi} within {ACCURACY_SLACK:g} of "
            f"depth {lo}",
            measured=res_drop,
            expected=f"drop <= {ACCURACY_SLACK:g}",
            holds=res_drop <= ACCURACY_SLACK,
            detail=f"seeds {seeds}",
        ),
        empirical_check(
            "plain_loses_accuracy",
            f"trained plain GNNs (GCN layers, no skips): mean test accuracy at depth {hi} more "
            f"than {ACCURACY_SLACK:g} below depth {lo}",
            measured=plain_drop,
            expected=f"drop > {ACCURACY_SLACK:g}",
            holds=plain_drop > ACCURACY_SLACK,
            detail=f"seeds {seeds}",
        ),
    ]
    figures = {
        "energy_error": energy_error,
        "per_depth": {
            str(d): {
                "energy_ratio_residual": ratio["residual"][i],
                "energy_ratio_plain": ratio["plain"][i],
                "test_accuracy_residual": spread(acc["residual"][d]),
                "test_accuracy_plain": spread(acc["plain"][d]),
                "trained_roughness_ratio_residual": spread(rough["residual"][d]),
                "trained_roughness_ratio_plain": spread(rough["plain"][d]),
            }
            for i, d in enumerate(depths)
        },
        "laplacian_eigenvalue_range": [
            float(np.linalg.eigvalsh(L)[0]),
            float(np.linalg.eigvalsh(L)[-1]),
        ],
    }
    plots = [
        plot_series(
            ctx.plots / "energy_vs_depth.png",
            depths,
            {
                f"residual, eta {cfg.eta:g}": np.array(ratio["residual"]),
                "plain, eta 1": np.array(ratio["plain"]),
            },
            xlabel="layers k",
            ylabel="Dirichlet energy / energy of the input",
            title="linear propagation on the SBM graph (formula = measured)",
            logx=True,
            logy=True,
        ),
        plot_series(
            ctx.plots / "accuracy_vs_depth.png",
            depths,
            {
                "residual GNN": np.array([acc["residual"][d] for d in depths]).T,
                "plain GNN (GCN)": np.array([acc["plain"][d] for d in depths]).T,
            },
            xlabel="layers",
            ylabel="test accuracy (unlabelled nodes)",
            title=f"trained on the SBM graph, {len(seeds)} seeds",
            logx=True,
        ),
    ]
    rows = "\n".join(
        f"| {d} | {ratio['residual'][i]:.3g} | {ratio['plain'][i]:.3g} | "
        f"{fmt_spread(spread(acc['residual'][d]))} | {fmt_spread(spread(acc['plain'][d]))} | "
        f"{np.mean(rough['residual'][d]):.3g} | {np.mean(rough['plain'][d]):.3g} |"
        for i, d in enumerate(depths)
    )
    n_train = int((data.y_train[0] >= 0).sum())
    report = (
        "## What was measured\n\n"
        f"Stochastic block model (resode.data sbm, graph seed {cfg.graph_seed}): "
        f"{A.shape[0]} nodes, {int(A.sum() / 2)} edges, 3 classes, {n_train} labelled nodes. "
        "Energy: tr(X^T L X) of the features after k layers of linear propagation, measured and "
        "by the eigen-formula. Trained: untied residual GNNs (X + eta tanh(-L X W_k)) and plain "
        f"GNNs (tanh((I - L) X W_k)), width {cfg.width}, {cfg.steps} steps (Adam, lr {cfg.lr:g}). "
        "Roughness ratio: the body output's Dirichlet energy per squared norm over the stem "
        "output's (below 1: smoother).\n\n"
        "| layers | energy ratio, residual | energy ratio, plain | test accuracy, residual | "
        "test accuracy, plain | trained roughness ratio, residual | plain |\n"
        "|---|---|---|---|---|---|---|\n" + rows + "\n"
    )
    return Result(checks=checks, figures=figures, plots=plots, report=report)
