"""Delta-learning: learn the small difference to a cheap baseline, per bond, and it transfers.

Physical system: 1-D chains of atoms. Bond j has length r0 + d_j. The cheap model is harmonic,
E_low = sum_j k d_j^2 / 2 with k = 2 D a^2 (the Morse curvature); the accurate one is Morse plus a
three-body term, E_high = sum_j D (1 - exp(-a d_j))^2 + c sum_j d_j d_{j+1} (d_j + d_{j+1}). Both
cost microseconds here. A size-extensive model sums one small MLP over bonds (its input: the bond's
stretch and its two neighbours'); "scratch" learns E_high, "delta" learns E_high - E_low and adds
E_low back. Trained (`resode.train.fit`) on chains of `train_atoms` atoms for every training-set size
in `sizes`, tested on chains of the same size and on chains of `test_atoms` atoms.

Exact (float64, from the run's D, a, c): the difference E_high - E_low vanishes to second order at
equilibrium (value, gradient and Hessian are 0), and both energies are additive over a bond at rest.
Empirical (over seeds): delta needs fewer samples for scratch's best error (`sample_efficiency` =
samples scratch needs / samples delta needs, > 1) and has the lower per-atom error on large chains.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from resode.config import ConfigError
from resode.data import Dataset
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fit_config,
    fmt_spread,
    plot_series,
    seed_list,
    spread,
)
from resode.nn import Diagnostics
from resode.train import Trainer, fit

CLAIM = (
    "Learning the small difference E_high - E_low on top of a cheap baseline needs fewer samples "
    "than learning E_high from scratch, and a per-bond (size-extensive) delta generalises from small "
    "systems to large ones."
)
SOURCE = "principles.md: delta-learning on a cheap baseline (CC vs DFT), size extensivity"
KEY_FIGURE = "sample_efficiency"


@dataclasses.dataclass
class Config:
    sizes: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    seed: int = 0
    num_seeds: int = 3
    train_atoms: int = 8
    test_atoms: int = 32
    num_test: int = 500
    steps: int = 1000
    lr: float = 3e-3
    hidden: int = 32
    morse_depth: float = 1.0  # D
    morse_width: float = 1.5  # a
    three_body: float = 0.5  # c
    stretch_low: float = -0.3  # bond stretches d_j ~ U(stretch_low, stretch_high)
    stretch_high: float = 0.5


QUICK = {"sizes": [16, 64], "num_seeds": 2, "steps": 60, "num_test": 64, "test_atoms": 16}


def validate(cfg: Config) -> None:
    if not cfg.sizes or any(n < 1 for n in cfg.sizes):
        raise ConfigError(f"sizes: must be a non-empty list of positive ints, got {cfg.sizes}.")
    if cfg.train_atoms < 3 or cfg.test_atoms < 3:
        raise ConfigError("train_atoms, test_atoms: chains need at least 3 atoms.")
    for key in ("num_seeds", "num_test", "steps", "hidden"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not cfg.stretch_low < cfg.stretch_high:
        raise ConfigError("stretch_low: must be below stretch_high.")
    if cfg.morse_depth <= 0 or cfg.morse_width <= 0:
        raise ConfigError("morse_depth, morse_width: must be > 0.")


def e_low(d, cfg):
    k = 2 * cfg.morse_depth * cfg.morse_width**2
    return 0.5 * k * jnp.sum(d**2, axis=-1)


def e_high(d, cfg):
    morse = cfg.morse_depth * (1 - jnp.exp(-cfg.morse_width * d)) ** 2
    a, b = d[..., :-1], d[..., 1:]
    return jnp.sum(morse, -1) + cfg.three_body * jnp.sum(a * b * (a + b), -1)


def descriptors(d):
    """Per bond: its stretch, its neighbours' (0 past an end) and two end flags; (bonds, 5)."""
    pad = jnp.pad(d, (1, 1))
    left, right = pad[:-2], pad[2:]
    n = d.shape[0]
    first = (jnp.arange(n) == 0).astype(d.dtype)
    last = (jnp.arange(n) == n - 1).astype(d.dtype)
    return jnp.stack([d, left, right, first, last], axis=1)


class BondSum(eqx.Module):
    """E(chain) = [E_low] + sum over bonds of mlp(descriptor): size-extensive by construction."""

    mlp: eqx.nn.MLP
    k_low: float = eqx.field(static=True)  # 0: scratch; the harmonic constant: delta

    def __call__(self, d, *, key=None, inference=False):
        per_bond = jax.vmap(self.mlp)(descriptors(d))[:, 0]
        energy = jnp.sum(per_bond) + 0.5 * self.k_low * jnp.sum(d**2)
        return energy[None], Diagnostics.explicit(0, d.dtype)


@eqx.filter_jit
def _predict(model, chains):
    return jax.vmap(lambda d: model(d)[0][0])(chains)


def _chains(rng, n, atoms, cfg):
    return rng.uniform(cfg.stretch_low, cfg.stretch_high, size=(n, atoms - 1)).astype(np.float32)


def _interp_size(sizes, errors, target):
    """Smallest training-set size where `errors` (mean over seeds, against `sizes`) reaches
    `target`, by log-log interpolation; (size, is_upper_bound)."""
    sizes, errors = np.asarray(sizes, float), np.asarray(errors, float)
    if errors[0] <= target:
        return sizes[0], True
    for i in range(1, len(sizes)):
        if errors[i] <= target:
            x0, x1 = np.log(sizes[i - 1]), np.log(sizes[i])
            y0, y1 = np.log(errors[i - 1]), np.log(errors[i])
            x = x0 + (np.log(target) - y0) * (x1 - x0) / (y1 - y0)
            return float(np.exp(x)), False
    return None, False


def _exact(cfg):
    with jax.enable_x64(True):
        delta = lambda d: e_high(d, cfg) - e_low(d, cfg)
        zero = jnp.zeros(cfg.train_atoms - 1, jnp.float64)
        value = float(jnp.abs(delta(zero)))
        grad = float(jnp.max(jnp.abs(jax.grad(delta)(zero))))
        hess = float(jnp.max(jnp.abs(jax.hessian(delta)(zero))))
        rng = np.random.default_rng(cfg.seed)
        a = jnp.asarray(rng.uniform(cfg.stretch_low, cfg.stretch_high, 5))
        b = jnp.asarray(rng.uniform(cfg.stretch_low, cfg.stretch_high, 6))
        joined = jnp.concatenate([a, jnp.zeros(1), b])
        add = max(float(jnp.abs(f(joined, cfg) - f(a, cfg) - f(b, cfg))) for f in (e_high, e_low))
        scale = float(jnp.abs(e_high(joined, cfg)))
    return value, grad, hess, add, scale


def run(cfg: Config, ctx) -> Result:
    sizes = sorted(int(n) for n in cfg.sizes)
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    k = 2 * cfg.morse_depth * cfg.morse_width**2
    value, grad, hess, add, scale = _exact(cfg)
    eps = np.finfo(np.float64).eps
    checks = [
        exact_check(
            "delta_second_order",
            "E_high - E_low vanishes to second order at rest: max of |value|, |gradient|, "
            "|Hessian| at d = 0 (k = 2 D a^2 from the run's D and a)",
            measured=max(value, grad, hess),
            expected=0.0,
            tolerance=64 * eps * k,
        ),
        exact_check(
            "energy_additivity",
            "joining two chains by a bond at rest adds their energies (E_high and E_low)",
            measured=add,
            expected=0.0,
            tolerance=64 * eps * max(scale, 1.0),
        ),
    ]

    base = fit_config(cfg.steps, cfg.lr, "train.steps_per_call=100")
    err = {m: np.full((len(seeds), len(sizes)), np.nan) for m in ("scratch", "delta")}
    large = {m: np.full((len(seeds), len(sizes)), np.nan) for m in ("scratch", "delta")}
    # The chains are drawn once (from `seed`); the seeds vary initialisation and batch order, so
    # one Trainer per (size, model) and its compiled calls serve every seed.
    rng = np.random.default_rng(1000 + cfg.seed)
    pool = _chains(rng, max(sizes), cfg.train_atoms, cfg)
    test = _chains(rng, cfg.num_test, cfg.train_atoms, cfg)
    big = _chains(rng, cfg.num_test, cfg.test_atoms, cfg)
    e_test = np.asarray(e_high(jnp.asarray(test), cfg))
    e_big = np.asarray(e_high(jnp.asarray(big), cfg))
    trainers = {}
    for i, s in enumerate(seeds):
        for j, n in enumerate(sizes):
            x = pool[:n]
            y = np.asarray(e_high(jnp.asarray(x), cfg), np.float32)[:, None]
            cfg_n = dataclasses.replace(base, seed=s)
            cfg_n.data.batch_size = min(64, n)
            for name, k_low in (("scratch", 0.0), ("delta", k)):
                mlp = eqx.nn.MLP(
                    5, 1, cfg.hidden, 2, activation=jax.nn.tanh, key=jax.random.PRNGKey(s)
                )
                model = BondSum(mlp, k_low)
                if (n, name) not in trainers:
                    data = Dataset(
                        "chains",
                        "regression",
                        0,
                        x,
                        y,
                        test,
                        e_test[:, None].astype(np.float32),
                        "chains",
                    )
                    trainers[n, name] = Trainer(cfg_n, data, model=model)
                trainer = trainers[n, name]
                result = fit(cfg_n, trainer.data, model=model, trainer=trainer)
                predict = lambda d, m=result.model: _predict(m, jnp.asarray(d))
                rmse = lambda p, e: float(np.sqrt(np.mean((np.asarray(p) - e) ** 2)))
                err[name][i, j] = rmse(predict(test), e_test) / cfg.train_atoms
                large[name][i, j] = rmse(predict(big), e_big) / cfg.test_atoms
            ctx.say(
                f"  seed {s}, {n} chains: per-atom RMSE scratch {err['scratch'][i, j]:.4g}, "
                f"delta {err['delta'][i, j]:.4g}; on {cfg.test_atoms}-atom chains "
                f"{large['scratch'][i, j]:.4g} / {large['delta'][i, j]:.4g}"
            )
    mean_s, mean_d = err["scratch"].mean(0), err["delta"].mean(0)
    target = mean_s[-1]
    n_delta, capped = _interp_size(sizes, mean_d, target)
    efficiency = None if n_delta is None else sizes[-1] / n_delta
    big_s, big_d = large["scratch"][:, -1], large["delta"][:, -1]
    checks += [
        empirical_check(
            "fewer_samples",
            "delta reaches scratch's test error at the largest size with fewer samples "
            "(sample_efficiency > 1)",
            measured=efficiency,
            expected="> 1",
            holds=efficiency is not None and efficiency > 1,
            detail=(
                f"scratch's error at {sizes[-1]} chains: {target:.4g}; delta reaches it at "
                + (
                    "no size tried"
                    if n_delta is None
                    else f"{'<= ' if capped else ''}{n_delta:.3g} chains"
                    + (
                        " (already at the smallest size: efficiency is a lower bound)"
                        if capped
                        else ""
                    )
                )
            ),
        ),
        empirical_check(
            "transfers_to_large_systems",
            f"trained on {cfg.train_atoms}-atom chains, delta's per-atom error on "
            f"{cfg.test_atoms}-atom chains is below scratch's in every seed (largest size)",
            measured=float(big_d.mean()),
            expected=f"< scratch ({big_s.mean():.4g}) in every seed",
            holds=bool(np.all(big_d < big_s)),
            detail=f"scratch {fmt_spread(spread(big_s), '.4g')}, delta "
            f"{fmt_spread(spread(big_d), '.4g')}",
        ),
    ]
    figures = {
        "sample_efficiency": efficiency,
        "sample_efficiency_is_lower_bound": bool(capped),
        "large_system_error_delta": float(big_d.mean()),
        "large_system_error_scratch": float(big_s.mean()),
        "large_system_error_delta_spread": spread(big_d),
        "large_system_error_scratch_spread": spread(big_s),
        "sizes": sizes,
        "test_error_scratch": [spread(err["scratch"][:, j]) for j in range(len(sizes))],
        "test_error_delta": [spread(err["delta"][:, j]) for j in range(len(sizes))],
        "delta_second_order": max(value, grad, hess),
        "energy_additivity_error": add,
        "seeds": seeds,
    }
    plots = [
        plot_series(
            ctx.plots / "learning_curves.png",
            sizes,
            {"scratch: E_high": err["scratch"], "delta: E_high - E_low": err["delta"]},
            xlabel="training chains",
            ylabel=f"per-atom RMSE ({cfg.train_atoms} atoms)",
            logx=True,
            logy=True,
            title=f"{len(seeds)} seeds",
        ),
        plot_series(
            ctx.plots / "large_systems.png",
            sizes,
            {"scratch": large["scratch"], "delta": large["delta"]},
            xlabel="training chains",
            ylabel=f"per-atom RMSE ({cfg.test_atoms} atoms)",
            logx=True,
            logy=True,
            title=f"trained on {cfg.train_atoms} atoms",
        ),
    ]
    rows = [
        "| chains | scratch (same size) | delta (same size) | scratch (large) | delta (large) |",
        "|---|---|---|---|---|",
    ]
    for j, n in enumerate(sizes):
        rows.append(
            f"| {n} | {fmt_spread(spread(err['scratch'][:, j]), '.4f')} | "
            f"{fmt_spread(spread(err['delta'][:, j]), '.4f')} | "
            f"{fmt_spread(spread(large['scratch'][:, j]), '.4f')} | "
            f"{fmt_spread(spread(large['delta'][:, j]), '.4f')} |"
        )
    report = (
        "## What was measured\n\n"
        f"Per-atom RMSE of the total energy (D = {cfg.morse_depth}, a = {cfg.morse_width}, "
        f"c = {cfg.three_body}, stretches in [{cfg.stretch_low}, {cfg.stretch_high}]), "
        f"{cfg.num_test} test chains each, seeds {seeds}, {cfg.steps} Adam steps per fit:\n\n"
        + "\n".join(rows)
        + "\n"
    )
    return Result(checks, figures, report, plots)
