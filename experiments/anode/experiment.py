"""What a neural ODE cannot represent, and what one extra dimension buys (Dupont et al.,
"Augmented Neural ODEs", NeurIPS 2019).

Crossing map: inputs -1 and +1 with targets +1 and -1. A neural ODE on the line, read out as its
own final state (no readout layer), is a flow map phi, which is increasing: phi(-1) <= phi(1).
With a fraction p of the test inputs at -1, any increasing map has test MSE >= 4 p (1 - p) (1 at
p = 1/2; the best is phi(-1) = phi(1) = 2p - 1). Exact: the trained ODE's map is increasing up to
the solver's tolerance and its test MSE is >= 4 p (1 - p). Empirical: an augmented ODE (the state
padded with `augment` zeros, read out as its first coordinate) reaches MSE near 0 (< 0.05 in
every seed).

Concentric spheres (class 0 in the ball |x| <= 0.5, class 1 in the shell 1 <= |x| <= 1.5, in
2-D, with a linear readout): both models train; the claim (Dupont et al., their figure 8) is
that the augmented model needs fewer function evaluations, because the plain one must stretch
the plane into a complicated flow. Empirical: mean test NFE of the augmented model below the
plain one's, in every seed.

Every model is an `resode.nn.ODEBlock` (diffrax, tsit5, rtol 1e-3 / atol 1e-6, adaptive) over an
`MLPField`, trained by `resode.train.fit` with one compiled trainer per model kind.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

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
)
from resode.nn import MLPField, ODEBlock
from resode.train import Trainer, fit

CLAIM = (
    "On the 1-D crossing map g(-1) = 1, g(1) = -1 a neural ODE (no readout) cannot do better "
    "than MSE 1; an augmented one reaches about 0; on concentric spheres the augmented model "
    "needs fewer function evaluations."
)
SOURCE = (
    "Dupont, Doucet & Teh, 'Augmented Neural ODEs', NeurIPS 2019; applications.md: ResNets as "
    "forward Euler"
)
KEY_FIGURE = "node_mse"
RTOL = 1e-3


@dataclasses.dataclass
class Config:
    augment: int = 1  # zero channels appended to the state
    seed: int = 0
    num_seeds: int = 3
    hidden: int = 32
    crossing_steps: int = 300
    spheres_steps: int = 400  # 0 skips the concentric-spheres comparison (the --quick run)
    lr: float = 3e-3
    adjoint: str = "recursive_checkpoint"  # how the ODE blocks are differentiated (ODEBlock's)
    max_steps: int = 4096  # adaptive steps per solve at most (ODEBlock's max_steps)


# --quick: diffrax's direct adjoint with at most 64 steps compiles a training step in about
# two thirds of the time of the default checkpointed one; the forward solves (which the exact
# checks read) are the same solver at the same tolerances.
QUICK = {
    "num_seeds": 2,
    "hidden": 16,
    "crossing_steps": 40,
    "spheres_steps": 0,
    "adjoint": "direct",
    "max_steps": 64,
}


def validate(cfg: Config) -> None:
    if cfg.augment < 1:
        raise ConfigError(
            f"augment: must be >= 1 (the augmented model needs a dimension), got {cfg.augment}."
        )  # noqa: E501
    if cfg.adjoint not in ("recursive_checkpoint", "backsolve", "direct"):
        raise ConfigError(
            f"adjoint: must be recursive_checkpoint, backsolve or direct, got {cfg.adjoint!r}."
        )
    if cfg.max_steps < 1:
        raise ConfigError(f"max_steps: must be >= 1, got {cfg.max_steps}.")
    if cfg.spheres_steps < 0:
        raise ConfigError(f"spheres_steps: must be >= 0, got {cfg.spheres_steps}.")
    for key in ("num_seeds", "hidden", "crossing_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")


class Flow(eqx.Module):
    """Pad the input with `augment` zeros, flow it with an ODE, read out the first `out`
    coordinates (`readout=None`) or a linear map of the whole final state."""

    block: ODEBlock
    readout: eqx.nn.Linear | None
    augment: int = eqx.field(static=True)
    out: int = eqx.field(static=True)

    def __init__(self, dim, augment, hidden, *, classes=None, adjoint, max_steps, key):
        k_field, k_head = jax.random.split(key)
        field = MLPField(dim + augment, hidden, key=k_field)
        self.block = ODEBlock(field, rtol=RTOL, atol=1e-6, adjoint=adjoint, max_steps=max_steps)
        self.readout = (
            None if classes is None else eqx.nn.Linear(dim + augment, classes, key=k_head)
        )
        self.augment, self.out = augment, dim

    def __call__(self, x, *, key=None, inference=False):
        z, diag = self.block(jnp.concatenate([x, jnp.zeros(self.augment, x.dtype)]))
        return (z[: self.out] if self.readout is None else self.readout(z)), diag


def _train_over_seeds(cfg, data, steps, make, seeds):
    runs, trainer = [], None
    for s in seeds:
        c = fit_config(steps, cfg.lr, f"seed={s}", "data.batch_size=64", "train.steps_per_call=50")
        model = make(jax.random.key(s))
        if trainer is None:
            trainer = Trainer(c, data, model=model)
        runs.append(fit(c, data, model=model, trainer=trainer))
    return runs


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    crossing = load("crossing1d", seed=cfg.seed)
    # (Generated only when trained on: 0.9 s of a quick run, which skips the spheres.)
    spheres = load("concentric_spheres", seed=cfg.seed) if cfg.spheres_steps else None
    p = float(np.mean(crossing.x_test[:, 0] < 0))
    bound = 4 * p * (1 - p)
    out = {}
    for name, aug in (("node", 0), ("anode", cfg.augment)):
        ctx.say(f"crossing map, {name}")
        ode = dict(adjoint=cfg.adjoint, max_steps=cfg.max_steps)
        make = lambda k, aug=aug: Flow(1, aug, cfg.hidden, key=k, **ode)
        out[name, "crossing"] = _train_over_seeds(cfg, crossing, cfg.crossing_steps, make, seeds)
        if cfg.spheres_steps:
            ctx.say(f"concentric spheres, {name}")
            make = lambda k, aug=aug: Flow(2, aug, cfg.hidden, classes=2, key=k, **ode)
            out[name, "spheres"] = _train_over_seeds(cfg, spheres, cfg.spheres_steps, make, seeds)

    mse = {n: [r.evaluation["test_loss"] for r in out[n, "crossing"]] for n in ("node", "anode")}
    # The plain ODE's map at -1 and +1 (increasing: phi(-1) <= phi(1) up to the solver's error).
    gaps = []
    for r in out["node", "crossing"]:
        lo, hi = (float(r.model(jnp.array([v], jnp.float32))[0][0]) for v in (-1.0, 1.0))
        gaps.append(lo - hi)
    checks = [
        exact_check(
            "node_map_increasing",
            "the trained 1-D ODE's map is increasing: phi(-1) - phi(1) <= 0 (largest over seeds; "
            f"tolerance: the solver's rtol {RTOL:g} on states of size ~1)",
            measured=max(gaps),
            expected=0.0,
            tolerance=10 * RTOL,
            compare="le",
        ),
        exact_check(
            "node_mse",
            f"the 1-D ODE's test MSE is >= 4p(1 - p) = {bound:.4f} (p = {p:.3f}, the fraction of "
            "test inputs at -1): no increasing map does better (smallest over seeds)",
            measured=min(mse["node"]),
            expected=bound,
            tolerance=20 * RTOL,
            compare="ge",
        ),
    ]
    anode_sp, node_sp = spread(mse["anode"]), spread(mse["node"])
    checks.append(
        empirical_check(
            "anode_fits_crossing",
            f"the augmented ODE ({cfg.augment} extra dimension(s)) fits the crossing map",
            measured=anode_sp["mean"],
            expected="test MSE < 0.05 in every seed",
            holds=all(m < 0.05 for m in mse["anode"]),
            detail=f"augmented {fmt_spread(anode_sp, '.3g')}, plain {fmt_spread(node_sp, '.4f')}",
        )
    )
    figures = {
        "node_mse": float(np.mean(mse["node"])),
        "anode_mse": float(np.mean(mse["anode"])),
        "node_nfe": None,
        "anode_nfe": None,
        "node_mse_over_seeds": node_sp,
        "anode_mse_over_seeds": anode_sp,
        "node_mse_bound": bound,
        "node_map_gap": spread(gaps),
    }
    loss = {n: np.array([r.history["loss"] for r in out[n, "crossing"]]) for n in ("node", "anode")}
    plots = [
        plot_series(
            ctx.plots / "crossing_loss.png",
            np.arange(1, cfg.crossing_steps + 1),
            {"neural ODE (1-D)": loss["node"], f"augmented (+{cfg.augment})": loss["anode"]},
            xlabel="training step",
            ylabel="training MSE",
            title="g(-1) = 1, g(1) = -1",
            reference={"4p(1-p) (test-set bound)": np.full(cfg.crossing_steps, bound)},
        )
    ]
    report = (
        "## What was measured\n\n"
        f"Crossing map ({len(seeds)} seeds): test MSE of the 1-D neural ODE "
        f"{fmt_spread(node_sp, '.4f')} against the bound 4p(1-p) = {bound:.4f}; phi(-1) - phi(1) "
        f"= {fmt_spread(spread(gaps), '.3g')} (<= 0: the map stays increasing). Augmented by "
        f"{cfg.augment}: {fmt_spread(anode_sp, '.3g')}.\n"
    )
    if cfg.spheres_steps:
        sph = {n: out[n, "spheres"] for n in ("node", "anode")}
        nfe = {n: [r.evaluation["test_num_fevals"] for r in sph[n]] for n in sph}
        acc = {n: [r.evaluation["test_accuracy"] for r in sph[n]] for n in sph}
        train_nfe = {n: np.array([r.history["num_fevals"] for r in sph[n]], float) for n in sph}
        checks.append(
            empirical_check(
                "anode_fewer_nfe",
                "on concentric spheres the augmented ODE needs fewer function evaluations",
                measured=spread(nfe["anode"])["mean"],
                expected="mean test NFE of the augmented model < the plain one's, in every seed",
                holds=all(a < b for a, b in zip(nfe["anode"], nfe["node"], strict=True)),
                detail=f"augmented {fmt_spread(spread(nfe['anode']), '.1f')}, plain "
                f"{fmt_spread(spread(nfe['node']), '.1f')}; accuracy augmented "
                f"{fmt_spread(spread(acc['anode']))}, plain {fmt_spread(spread(acc['node']))}",
            )
        )
        figures.update({
            "node_nfe": float(np.mean(nfe["node"])),
            "anode_nfe": float(np.mean(nfe["anode"])),
            "node_nfe_over_seeds": spread(nfe["node"]),
            "anode_nfe_over_seeds": spread(nfe["anode"]),
            "node_accuracy": spread(acc["node"]),
            "anode_accuracy": spread(acc["anode"]),
            "spheres_train_time_s": {n: float(sum(r.train_time_s for r in sph[n])) for n in sph},
        })  # fmt: skip
        plots.append(
            plot_series(
                ctx.plots / "spheres_nfe.png",
                np.arange(1, cfg.spheres_steps + 1),
                {
                    "neural ODE (2-D)": train_nfe["node"],
                    f"augmented (+{cfg.augment})": train_nfe["anode"],
                },  # fmt: skip
                xlabel="training step",
                ylabel="function evaluations per solve",
                title=f"concentric spheres, {len(seeds)} seeds",
            )
        )
        times = figures["spheres_train_time_s"]
        report += (
            f"\nConcentric spheres ({cfg.spheres_steps} steps): test NFE per solve, plain "
            f"{fmt_spread(spread(nfe['node']), '.1f')}, augmented "
            f"{fmt_spread(spread(nfe['anode']), '.1f')}; test accuracy plain "
            f"{fmt_spread(spread(acc['node']))}, augmented {fmt_spread(spread(acc['anode']))}; "
            f"training time (compilation included) plain {times['node']:.1f} s, augmented "
            f"{times['anode']:.1f} s.\n"
        )
    return Result(checks, figures, report, plots)
