"""How large may the residual scale of an attention stack be?

The seed chapter (applications.md, Transformers) writes a Transformer block as x + alpha Attn(x)
and says it stays stable only while alpha is small against the attention's Jacobian: the block's
Jacobian I + alpha J_Attn has spectral norm at most 1 + alpha ||J_Attn|| (exact, by the triangle
inequality), so past alpha ~ 1 / ||J_Attn|| a deep stack can amplify perturbations and its scale
can run away, while LayerNorm (which makes the attention blind to the state's scale) keeps it
trainable. Setting: associative recall (resode.data "retrieval"), a resode.nn.SequenceClassifier
whose body is `depth` residual steps x <- x + alpha MHA(x) (untied AttentionFields, h = 1),
without and with a pre-norm LayerNorm.

Exact: at every probe (embedded test sequences, the initial first block), ||I + alpha J_Attn||_2
<= 1 + alpha ||J_Attn||_2. Empirical (over seeds): without LayerNorm, the alphas above
1 / ||J_Attn|| (measured at initialisation) diverge or end with a clearly higher loss than the best
alpha below it; with LayerNorm every alpha trains (no divergence) and the largest alpha ends lower
than without.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

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
    require_at_least_one,
    seed_list,
    spread,
    to_float64,
)
from resode.train import Trainer, fit

CLAIM = (
    "x + alpha Attn(x) has Jacobian norm at most 1 + alpha ||J_Attn||; without LayerNorm deep "
    "stacks degrade or diverge once alpha exceeds about 1 / ||J_Attn||, LayerNorm keeps them "
    "trainable."
)
SOURCE = (
    "applications.md: Transformers, x + alpha Attn(x) and the attention Jacobian's spectral norm; "
    "Xiong et al., ICML 2020, 'On layer normalization in the Transformer architecture'"
)
KEY_FIGURE = "max_norm_over_bound"
ROUNDING = 1e-9  # float64 slack on norm / bound
DEGRADE = 1.1  # "clearly higher loss": more than 10 % above the best alpha below the threshold


@dataclasses.dataclass
class Config:
    alphas: list = dataclasses.field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    depth: int = 8
    layer_norm: bool = True  # also train the pre-norm (LayerNorm) stacks, for the comparison
    seed: int = 0
    num_seeds: int = 3
    width: int = 32
    num_heads: int = 4
    steps: int = 400
    lr: float = 3e-3
    num_probes: int = 8


QUICK = {
    "alphas": [0.5, 4.0],
    "depth": 2,
    "num_seeds": 1,
    "width": 8,
    "num_heads": 2,
    "steps": 10,
    "num_probes": 2,
}


def validate(cfg: Config) -> None:
    if not isinstance(cfg.alphas, list) or len(cfg.alphas) < 2:
        raise ConfigError(f"alphas: must list at least two scales, got {cfg.alphas!r}.")
    if any(not float(a) > 0 for a in cfg.alphas):
        raise ConfigError(f"alphas: every scale must be > 0, got {cfg.alphas!r}.")
    require_at_least_one(cfg, "depth", "num_seeds", "width", "num_heads", "steps", "num_probes")
    if cfg.width % cfg.num_heads:
        raise ConfigError(f"num_heads: must divide width ({cfg.width}), got {cfg.num_heads}.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")


def build(cfg: Config, data, alpha: float, layer_norm: bool, seed: int):
    seq, features = data.input_shape
    k_body, k_model = jax.random.split(jax.random.PRNGKey(seed))
    body = rn.ResidualStack(
        lambda k: rn.AttentionField(cfg.width, cfg.num_heads, layer_norm=layer_norm, key=k),
        cfg.depth,
        alpha=alpha,
        t1=float(cfg.depth),  # h = 1: x <- x + alpha MHA(x)
        key=k_body,
    )
    return rn.SequenceClassifier(
        features, seq, cfg.width, data.num_classes, body, readout="last", key=k_model
    )


def _first_field(model):
    return jax.tree_util.tree_map(lambda a: a[0] if eqx.is_array(a) else a, model.body.field)


@eqx.filter_jit
def _jacobian_norms(field, alpha, states):
    """(||J_Attn||, ||I + alpha J_Attn||) at each state, dense Jacobians (float64)."""

    def one(y):
        n = y.size
        J = jax.jacfwd(lambda v: field(0.0, v.reshape(y.shape)).reshape(-1))(y.reshape(-1))
        return (
            jnp.linalg.norm(J, 2),
            jnp.linalg.norm(jnp.eye(n, dtype=J.dtype) + alpha * J, 2),
        )

    return jax.vmap(one)(states)


def run(cfg: Config, ctx) -> Result:
    alphas = sorted(float(a) for a in cfg.alphas)
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    data = load("retrieval")
    variants = ["no_norm"] + (["layer_norm"] if cfg.layer_norm else [])
    loss = {v: {a: [] for a in alphas} for v in variants}
    acc = {v: {a: [] for a in alphas} for v in variants}
    diverged = {v: {a: [] for a in alphas} for v in variants}
    jac, block, worst = {a: [] for a in alphas}, {a: [] for a in alphas}, 0.0
    j_attn = []
    for v in variants:
        for a in alphas:
            trainer = None
            for s in seeds:
                model = build(cfg, data, a, v == "layer_norm", s)
                if v == "no_norm":  # the exact check, at initialisation, in float64
                    with jax.enable_x64(True):
                        m64 = to_float64(model)
                        x64 = jnp.asarray(data.x_test[: cfg.num_probes], jnp.float64)
                        states = jax.vmap(lambda x, m=m64: jax.vmap(m.embed)(x) + m.positions)(x64)
                        nj, nb = _jacobian_norms(_first_field(m64), a, states)
                        nj, nb = np.asarray(nj), np.asarray(nb)
                    worst = max(worst, float(np.max(nb / (1.0 + a * nj))))
                    jac[a].append(float(np.mean(nj)))
                    block[a].append(float(np.mean(nb)))
                    if a == alphas[0]:
                        j_attn.append(float(np.mean(nj)))
                c = fit_config(
                    cfg.steps, cfg.lr, f"seed={s}", "data.name=retrieval", "train.steps_per_call=50"
                )
                if trainer is None:
                    trainer = Trainer(c, data, model=model)
                r = fit(c, data, model=model, trainer=trainer)
                diverged[v][a].append(bool(r.diverged))
                loss[v][a].append(float(r.evaluation["test_loss"]))
                acc[v][a].append(float(r.evaluation["test_accuracy"]))
            ctx.say(
                f"  {v} alpha {a:g}: test loss {fmt_spread(spread(loss[v][a]))}, accuracy "
                f"{fmt_spread(spread(acc[v][a]))}, diverged {sum(diverged[v][a])}/{len(seeds)}"
            )
    threshold = 1.0 / float(np.mean(j_attn))
    mean = {v: {a: float(np.nanmean(loss[v][a])) for a in alphas} for v in variants}
    below = [a for a in alphas if a <= threshold]
    above = [a for a in alphas if a > threshold]
    best_below = min((mean["no_norm"][a] for a in below), default=float("nan"))

    def degraded(a):
        bad = any(diverged["no_norm"][a]) or not np.isfinite(mean["no_norm"][a])
        return bad or mean["no_norm"][a] > DEGRADE * best_below

    no_norm_holds = bool(below and above and all(degraded(a) for a in above))
    checks = [
        exact_check(
            "max_norm_over_bound",
            "at every probe, ||I + alpha J_Attn||_2 <= 1 + alpha ||J_Attn||_2 (largest ratio over "
            f"probes, alphas and seeds; float64 slack {ROUNDING:g})",
            measured=worst,
            expected=1.0,
            tolerance=ROUNDING,
            compare="le",
        ),
        empirical_check(
            "no_norm_degrades_above_threshold",
            "without LayerNorm, every alpha above 1 / ||J_Attn|| (measured at initialisation) "
            f"diverges or ends with a mean test loss more than {DEGRADE:g} x the best alpha below it",
            measured={f"{a:g}": mean["no_norm"][a] for a in alphas},
            expected=f"threshold 1/||J_Attn|| = {threshold:.3g}; alphas above it degraded",
            holds=no_norm_holds,
            detail="alphas below the threshold: "
            + (", ".join(f"{a:g}" for a in below) or "none")
            + "; above: "
            + (", ".join(f"{a:g}" for a in above) or "none"),
        ),
    ]
    if cfg.layer_norm:
        top = alphas[-1]
        ln_holds = not any(any(diverged["layer_norm"][a]) for a in alphas) and (
            mean["layer_norm"][top] < mean["no_norm"][top] or not np.isfinite(mean["no_norm"][top])
        )
        checks.append(
            empirical_check(
                "layer_norm_keeps_trainable",
                "with LayerNorm no alpha diverges, and at the largest alpha the mean test loss is "
                "lower than without LayerNorm",
                measured={f"{a:g}": mean["layer_norm"][a] for a in alphas},
                expected=f"no divergence; loss at alpha {top:g} < {mean['no_norm'][top]:.4f}",
                holds=bool(ln_holds),
            )
        )
    figures = {
        "max_norm_over_bound": worst,
        "attention_jacobian_norm": spread(j_attn),
        "threshold_alpha": threshold,
        "per_alpha": {
            f"{a:g}": {
                "jacobian_norm_block": spread(block[a]),
                "bound": float(1.0 + a * np.mean(jac[a])),
                **{
                    f"{v}_{k}": val
                    for v in variants
                    for k, val in (
                        ("final_loss", spread(loss[v][a])),
                        ("accuracy", spread(acc[v][a])),
                        ("diverged", int(sum(diverged[v][a]))),
                    )
                },
            }
            for a in alphas
        },
    }
    series = {f"{v.replace('_', ' ')}": np.array([loss[v][a] for a in alphas]).T for v in variants}
    plots = [
        plot_series(
            ctx.plots / "loss_vs_alpha.png",
            alphas,
            series,
            xlabel="residual scale alpha",
            ylabel="test loss (cross-entropy)",
            title=f"depth {cfg.depth} attention stacks, 1/||J_Attn|| = {threshold:.2f}",
            logx=True,
            reference={"chance": np.full(len(alphas), np.log(data.num_classes))},
        ),
        plot_series(
            ctx.plots / "jacobian_vs_alpha.png",
            alphas,
            {"||I + alpha J||": np.array([block[a] for a in alphas]).T},
            xlabel="residual scale alpha",
            ylabel="spectral norm at the probes (initial first block)",
            logx=True,
            reference={"1 + alpha ||J_Attn||": [1.0 + a * np.mean(jac[a]) for a in alphas]},
        ),
    ]
    rows = "\n".join(
        f"| {a:g} | {np.mean(block[a]):.3g} | {1.0 + a * np.mean(jac[a]):.3g} | "
        + " | ".join(
            f"{fmt_spread(spread(loss[v][a]))} ({sum(diverged[v][a])} diverged) | "
            f"{fmt_spread(spread(acc[v][a]))}"
            for v in variants
        )
        + " |"
        for a in alphas
    )
    head = " | ".join(f"{v} test loss | {v} accuracy" for v in variants)
    report = (
        "## What was measured\n\n"
        f"Associative recall (4 key-value pairs and a query, 8 values, chance loss "
        f"{np.log(data.num_classes):.3f}); SequenceClassifier with {cfg.depth} untied steps "
        f"x <- x + alpha MHA(x) (width {cfg.width}, {cfg.num_heads} heads), {cfg.steps} steps of "
        f"Adam (lr {cfg.lr:g}) per alpha, variant and seed. Jacobians at {cfg.num_probes} "
        f"embedded test sequences, initial first block, float64. ||J_Attn|| at initialisation: "
        f"{fmt_spread(spread(j_attn))}, so 1/||J_Attn|| = {threshold:.3g}.\n\n"
        f"| alpha | ||I + alpha J|| (mean) | bound (mean) | {head} |\n"
        "|---|---|---|" + "---|---|" * len(variants) + "\n" + rows + "\n"
    )
    return Result(checks=checks, figures=figures, plots=plots, report=report)
