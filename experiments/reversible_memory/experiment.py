"""Reversible residual stacks: exact reconstruction, exact gradients, memory flat in depth.

A momentum ResNet (Sander et al., ICML 2021: v <- gamma v + (1 - gamma) f_k(x), x <- x + h v) is
run with resode's reversible adjoint, which rebuilds every state backwards instead of storing it.
Exact (float64, untied random MLP blocks): the input rebuilt from the output, and the gradients
against storing autodiff, within a bound computed from the run's own gamma and depth (each inverse
step divides the velocity's rounding error by gamma: eps * N * gamma^-N, times a safety factor).
Exact (XLA's memory analysis of the compiled training step, deterministic): a reversible stack's
temporary memory is flat in depth, a stored one's grows with it. Measured: the step time of each,
and the float32 drift of the reconstruction. Empirical (over seeds): a momentum ResNet trained on
digits reaches the test accuracy of the ordinary ResNet it replaces.
"""

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import resode
import resode.nn as rn
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
from resode.train import Trainer, build_model, fit

CLAIM = (
    "A momentum ResNet rebuilds its states backwards exactly (float64), so its gradients equal "
    "storing autodiff while its memory stays flat in depth, and it trains as well as the ResNet "
    "it replaces."
)
SOURCE = (
    "Sander et al., ICML 2021, 'Momentum residual neural networks' (the memory claim); "
    "applications.md: ResNets as forward Euler steps of an ODE"
)
KEY_FIGURE = "memory_ratio_reversible"

SAFETY = 100.0  # factor on the rounding bound eps * N * gamma^-N
MARGIN = 0.02  # empirical: momentum mean test accuracy >= ResNet mean - MARGIN


@dataclasses.dataclass
class Config:
    depths: list = dataclasses.field(default_factory=lambda: [4, 16, 64, 256])
    gamma: float = 0.9  # momentum of the reversible stack, in (0, 1)
    seed: int = 0
    num_seeds: int = 3  # training seeds for the accuracy comparison
    width: int = 64  # state size of the memory/time stacks and of the classifiers
    batch: int = 128  # examples per training step in the memory/time measurement
    train_depth: int = 16  # depth of the two classifiers trained on digits
    steps: int = 400
    lr: float = 3e-3


QUICK = {"depths": [2, 8], "num_seeds": 1, "width": 16, "batch": 16, "train_depth": 2, "steps": 20}


def validate(cfg: Config) -> None:
    if not 0.0 < cfg.gamma < 1.0:
        raise ConfigError(f"gamma: must be in (0, 1), got {cfg.gamma}.")
    if not isinstance(cfg.depths, list) or len(cfg.depths) < 2:
        raise ConfigError(f"depths: must be a list of at least two depths, got {cfg.depths!r}.")
    if any(int(d) < 1 for d in cfg.depths):
        raise ConfigError(f"depths: every depth must be >= 1, got {cfg.depths!r}.")
    for key in ("num_seeds", "width", "batch", "train_depth", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def _stack(depth, width, **kw):
    return rn.ResidualStack(
        lambda k: rn.MLPField(width, 2 * width, key=k), depth, key=jax.random.PRNGKey(0), **kw
    )


def _rebuild_error(s0, y):
    """Relative error of a rebuilt momentum state: position against the input `y`, velocity
    against zero (where it started)."""
    return jnp.sqrt(jnp.sum((s0[0] - y) ** 2) + jnp.sum(s0[1] ** 2)) / jnp.linalg.norm(y)


def _float64_errors(depth, gamma, seed):
    """Relative errors, in float64, of the state rebuilt from the output (position and
    velocity, against the input and zero) and of the weight gradients (reconstructing against
    storing), for an untied random momentum stack. One compiled program per depth."""
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(seed)
        stack = rn.ResidualStack(
            lambda k: rn.MLPField(8, 16, key=k), depth, reversible="momentum", gamma=gamma, key=key
        )
        stack = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, stack
        )
        y = jax.random.normal(jax.random.fold_in(key, 1), (8,), jnp.float64)
        method = stack.reversible
        f = lambda t, z, fs: fs[1] * fs[0](t, z, None)
        kw = dict(method=method, per_step_args=True)

        @eqx.filter_jit
        def errors(stack, y):
            step_args = stack.step_function(None, inference=True, dtype=jnp.float64)[1]
            s1 = resode.reversible_integrate(
                f, y, 0.0, 1.0, depth, step_args, return_state=True, **kw
            )
            s0 = resode.reversible_rebuild(f, s1, 0.0, 1.0, depth, step_args, **kw)
            rebuild = _rebuild_error(s0, y)

            def loss(field, adjoint):
                args = (field, step_args[1])
                out = resode.reversible_integrate(
                    f, y, 0.0, 1.0, depth, args, adjoint=adjoint, **kw
                )
                return jnp.sum(jnp.sin(out))

            g = eqx.filter_grad(lambda fl: loss(fl, "reconstruct"))(stack.field)
            g_ref = eqx.filter_grad(lambda fl: loss(fl, "store"))(stack.field)
            pairs = zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True)
            num = sum(jnp.sum((a - b) ** 2) for a, b in pairs)
            den = sum(jnp.sum(b**2) for b in jax.tree.leaves(g_ref))
            return rebuild, jnp.sqrt(num / den)

        rebuild, grad = errors(stack, y)
        return float(rebuild), float(grad)


@eqx.filter_jit
def _rebuild_error_of(stack, y):
    """Relative error of the state rebuilt from the output of `stack` run from `y` (one compiled
    program per depth)."""
    fn, step_args = stack.step_function(None, inference=True)
    kw = dict(method=stack.reversible, per_step_args=True)
    n = stack.num_steps
    s1 = resode.reversible_integrate(fn, y, 0.0, 1.0, n, step_args, return_state=True, **kw)
    s0 = resode.reversible_rebuild(fn, s1, 0.0, 1.0, n, step_args, **kw)
    return _rebuild_error(s0, y)


def _float32_drift(depth, gamma, width, seed):
    stack = _stack(depth, width, reversible="momentum", gamma=gamma)
    y = jax.random.normal(jax.random.PRNGKey(seed + 1), (width,))
    return float(_rebuild_error_of(stack, y))


def _step_cost(stack, x, target, repeats=5):
    """Temporary memory (bytes, XLA's analysis) and median time (ms) of loss + gradient."""

    def loss(m):
        out = jax.vmap(lambda v: m(v)[0])(x)
        return jnp.mean((out - target) ** 2)

    # One compilation serves the memory analysis and the timed calls.
    grad = eqx.filter_jit(eqx.filter_grad(loss)).lower(stack).compile()
    mem = grad.compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(grad(stack))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(stack))
        times.append((time.perf_counter() - start) * 1e3)
    return mem, float(np.median(times))


VARIANTS = {
    "stored": {},
    "checkpointed": {"checkpoint": True},
    "reversible": {"reversible": "momentum"},
}


def run(cfg: Config, ctx) -> Result:
    depths = sorted(int(d) for d in cfg.depths)
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    eps = float(np.finfo(np.float64).eps)
    bound = {d: SAFETY * eps * d * cfg.gamma ** (-d) for d in depths}

    # Exact, float64: reconstruction and gradients at every depth.
    rebuild, grad_err = {}, {}
    for d in depths:
        rebuild[d], grad_err[d] = _float64_errors(d, cfg.gamma, cfg.seed)
        ctx.say(f"  depth {d:4d}: float64 rebuild {rebuild[d]:.2e}, gradient {grad_err[d]:.2e}")
    worst_rebuild = max(rebuild[d] / bound[d] for d in depths)
    worst_grad = max(grad_err[d] / bound[d] for d in depths)

    # Memory and time of a training step (float32).
    x = jax.random.normal(jax.random.PRNGKey(cfg.seed), (cfg.batch, cfg.width))
    target = jnp.tanh(x)
    mem = {v: [] for v in VARIANTS}
    ms = {v: [] for v in VARIANTS}
    for d in depths:
        for v, kw in VARIANTS.items():
            m, t = _step_cost(_stack(d, cfg.width, gamma=cfg.gamma, **kw), x, target)
            mem[v].append(m)
            ms[v].append(t)
        ctx.say(
            f"  depth {d:4d}: MiB "
            + ", ".join(f"{v} {mem[v][-1] / 2**20:.2f}" for v in VARIANTS)
            + "; ms "
            + ", ".join(f"{v} {ms[v][-1]:.1f}" for v in VARIANTS)
        )
    drift32 = [_float32_drift(d, cfg.gamma, cfg.width, cfg.seed) for d in depths]
    rev_ratio = max(mem["reversible"]) / min(mem["reversible"])
    stored_ratio = mem["stored"][-1] / mem["stored"][0]
    depth_ratio = depths[-1] / depths[0]

    # Empirical: train both classifiers over seeds.
    data = load("digits")
    acc = {"resnet": [], "momentum": []}
    for kind, extra in (("resnet", []), ("momentum", ["model.body.reversible=momentum"])):
        trainer = None
        for s in seeds:
            c = fit_config(
                cfg.steps,
                cfg.lr,
                f"seed={s}",
                f"model.width={cfg.width}",
                f"model.body.num_steps={cfg.train_depth}",
                f"model.body.gamma={cfg.gamma}",
                "train.steps_per_call=50",
                *extra,
            )
            if trainer is None:
                trainer = Trainer(c, data)
            result = fit(c, data, model=build_model(c, data), trainer=trainer)
            acc[kind].append(float(result.evaluation["test_accuracy"]))
        ctx.say(f"  {kind}: test accuracy {fmt_spread(spread(acc[kind]))}")
    gap = float(np.mean(acc["momentum"]) - np.mean(acc["resnet"]))

    checks = [
        exact_check(
            "reconstruction_error",
            "float64: the input rebuilt from the output of an untied momentum stack is within "
            f"{SAFETY:g} eps N gamma^-N of the input at every depth (largest error / bound)",
            measured=worst_rebuild,
            expected=1.0,
            tolerance=0.0,
            compare="le",
        ),
        exact_check(
            "gradient_error",
            "float64: reconstructing gradients equal storing autodiff within the same bound "
            "(largest relative error / bound over depths)",
            measured=worst_grad,
            expected=1.0,
            tolerance=0.0,
            compare="le",
        ),
        exact_check(
            "reversible_memory_flat",
            f"the reversible stack's training-step memory is flat in depth: max / min over depths "
            f"{depths[0]}-{depths[-1]} at most 1.2",
            measured=rev_ratio,
            expected=1.2,
            tolerance=0.0,
            compare="le",
        ),
        exact_check(
            "stored_memory_grows",
            f"the stored stack's memory grows with depth: depth {depths[-1]} / depth {depths[0]} at "
            f"least half the depth ratio {depth_ratio:g}",
            measured=stored_ratio,
            expected=0.5 * depth_ratio,
            tolerance=0.0,
            compare="ge",
        ),
        empirical_check(
            "momentum_trains_as_well",
            f"a momentum ResNet (gamma {cfg.gamma}, depth {cfg.train_depth}) reaches the ResNet's "
            f"mean test accuracy on digits within {MARGIN}",
            measured=gap,
            expected=f">= -{MARGIN}",
            tolerance=MARGIN,
            holds=gap >= -MARGIN,
            detail=f"momentum {fmt_spread(spread(acc['momentum']))}, ResNet "
            f"{fmt_spread(spread(acc['resnet']))} over seeds {seeds}",
        ),
    ]
    figures = {
        "reconstruction_error": {str(d): rebuild[d] for d in depths},
        "gradient_error": {str(d): grad_err[d] for d in depths},
        "rounding_bound": {str(d): bound[d] for d in depths},
        "float32_reconstruction_error": dict(zip(map(str, depths), drift32, strict=True)),
        "memory_mib": {
            v: dict(zip(map(str, depths), [m / 2**20 for m in mem[v]], strict=True))
            for v in VARIANTS
        },
        "step_time_ms": {v: dict(zip(map(str, depths), ms[v], strict=True)) for v in VARIANTS},
        "memory_ratio_reversible": rev_ratio,
        "memory_ratio_stored": stored_ratio,
        "test_accuracy": {k: spread(v) for k, v in acc.items()},
        "accuracy_gap": gap,
    }
    plots = [
        plot_series(
            ctx.plots / "memory_vs_depth.png",
            depths,
            {v: np.array(mem[v]) / 2**20 for v in VARIANTS},
            xlabel="depth (steps)",
            ylabel="temporary memory of loss + grad (MiB)",
            title=f"MLP {cfg.width}, batch {cfg.batch}, float32",
            logx=True,
            logy=True,
        ),
        plot_series(
            ctx.plots / "time_vs_depth.png",
            depths,
            {v: np.array(ms[v]) for v in VARIANTS},
            xlabel="depth (steps)",
            ylabel="loss + grad time (ms, median)",
            title=f"MLP {cfg.width}, batch {cfg.batch}, float32",
            logx=True,
            logy=True,
        ),
    ]
    rows = "\n".join(
        f"| {d} | {rebuild[d]:.1e} | {grad_err[d]:.1e} | {bound[d]:.1e} | {drift32[i]:.1e} | "
        + " | ".join(f"{mem[v][i] / 2**20:.2f} / {ms[v][i]:.1f}" for v in VARIANTS)
        + " |"
        for i, d in enumerate(depths)
    )
    report = (
        "## What was measured\n\n"
        f"Momentum stacks with gamma = {cfg.gamma}. Float64 errors on untied random MLP(8, 16) "
        f"blocks; memory (MiB) / time (ms) of loss + gradient for MLP({cfg.width}, "
        f"{2 * cfg.width}) blocks, batch {cfg.batch}, float32, XLA memory analysis; float32 "
        "drift: relative error of the input rebuilt from the output.\n\n"
        "| depth | f64 rebuild | f64 gradient | bound | f32 rebuild | "
        + " | ".join(f"{v} MiB / ms" for v in VARIANTS)
        + " |\n|"
        + "---|" * (5 + len(VARIANTS))
        + "\n"
        + rows
        + "\n\n"
        f"Reversible memory max / min over depths: {rev_ratio:.3g}; stored depth {depths[-1]} / "
        f"{depths[0]}: {stored_ratio:.3g}.\n\n"
        f"Test accuracy on digits after {cfg.steps} steps, depth {cfg.train_depth}: momentum "
        f"{fmt_spread(spread(acc['momentum']))}, ResNet {fmt_spread(spread(acc['resnet']))} "
        f"(gap {gap:+.3f}).\n"
    )
    return Result(checks, figures, report, plots)
