"""A soft-threshold residual block is exactly the identity inside its dead zone.

The block y = x + F(x), F(x) = W2 soft(W1 x, tau) (`resode.nn.MLPField` without biases, activation
`resode.nn.soft_threshold`, in a one-step `resode.nn.ResidualStack`) is trained (float32, Adam,
`resode.train.fit`) to imitate a teacher block of the same form (random W1*, W2*, threshold
`teacher_threshold`) on Gaussian inputs. Exact (float64, the trained weights): every input whose
pre-activations all lie in [-tau, tau] leaves the block unchanged, F(x) = 0 and the Jacobian is I,
checked on the test inputs that fall there and on probes built inside the zone. Empirical (over
seeds): after training a fraction of the test inputs lies in the dead zone.
"""

import dataclasses
import functools

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
    to_float64,
)
from resode.nn import MLPField, ResidualStack, soft_threshold
from resode.train import fit

CLAIM = (
    "A soft-threshold block F(x) = W2 soft(W1 x, tau) is exactly the identity wherever every "
    "pre-activation lies in [-tau, tau]; training leaves a fraction of inputs there."
)
SOURCE = "principles.md: the soft-threshold dead zone"
KEY_FIGURE = "fraction_identity"


@dataclasses.dataclass
class Config:
    threshold: float = 0.5  # tau of the trained block
    teacher_threshold: float = 1.0  # tau of the teacher that makes the targets
    dim: int = 8
    hidden: int = 16
    num_train: int = 2000
    num_test: int = 1000
    steps: int = 1000
    lr: float = 3e-3
    seed: int = 0
    num_seeds: int = 3


QUICK = {"num_train": 256, "num_test": 128, "steps": 60, "num_seeds": 2}


def validate(cfg: Config) -> None:
    for key in ("threshold", "teacher_threshold"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cfg, key)}.")
    for key in ("dim", "hidden", "num_train", "num_test", "steps", "num_seeds"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def _block(dim, hidden, tau, key):
    act = functools.partial(soft_threshold, threshold=tau)
    return ResidualStack(
        lambda k: MLPField(dim, hidden, activation=act, use_bias=False, key=k), 1, key=key
    )


def _parts(block):
    """(W1, W2) of a one-step untied block."""
    layers = block.field.layers
    return layers[0].weight[0], layers[1].weight[0]


def run(cfg: Config, ctx) -> Result:
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    base = fit_config(cfg.steps, cfg.lr, "train.steps_per_call=100", "data.batch_size=128")
    fractions, teacher_fractions, max_f, max_jac, probe_f, test_loss = [], [], [], [], [], []
    zone_counts = []
    for s in seeds:
        k_t, k_s, k_x, k_p = jax.random.split(jax.random.PRNGKey(s), 4)
        teacher = _block(cfg.dim, cfg.hidden, cfg.teacher_threshold, k_t)
        rng = np.random.default_rng(s)
        x = rng.normal(size=(cfg.num_train + cfg.num_test, cfg.dim)).astype(np.float32)
        t = np.asarray(jax.vmap(lambda xi: teacher(xi, inference=True)[0])(x), np.float32)
        n = cfg.num_train
        data = Dataset("teacher", "regression", 0, x[:n], t[:n], x[n:], t[n:], "teacher block")
        student = _block(cfg.dim, cfg.hidden, cfg.threshold, k_s)
        cfg_s = dataclasses.replace(base, seed=s)
        result = fit(cfg_s, data, model=student)  # each seed has its own teacher and data
        test_loss.append(result.evaluation["test_loss"])

        with jax.enable_x64(True):
            trained = to_float64(result.model)
            w1, _ = _parts(trained)
            xt = jnp.asarray(x[n:], jnp.float64)
            field = lambda z: trained(z, inference=True)[0] - z
            pre = xt @ w1.T
            zone = jnp.all(jnp.abs(pre) <= cfg.threshold, axis=1)
            fractions.append(float(jnp.mean(zone)))
            zone_counts.append(int(jnp.sum(zone)))
            tw1, _ = _parts(teacher)
            teacher_fractions.append(
                float(
                    jnp.mean(
                        jnp.all(
                            jnp.abs(xt @ tw1.T.astype(jnp.float64)) <= cfg.teacher_threshold, axis=1
                        )
                    )
                )
            )
            # Probes inside the zone: random directions scaled so that max |W1 x| = u tau.
            d = jax.random.normal(k_p, (64, cfg.dim), jnp.float64)
            u = jax.random.uniform(jax.random.fold_in(k_p, 1), (64, 1), jnp.float64)
            scale = jnp.max(jnp.abs(d @ w1.T), axis=1, keepdims=True)
            probes = d * u * cfg.threshold / scale
            inside = jnp.concatenate([xt[zone], probes])
            fs = jax.vmap(field)(inside)
            max_f.append(float(jnp.max(jnp.abs(fs))))
            probe_f.append(float(jnp.max(jnp.abs(jax.vmap(field)(probes)))))
            jac = jax.vmap(jax.jacfwd(lambda z: trained(z, inference=True)[0]))(inside)
            max_jac.append(float(jnp.max(jnp.abs(jac - jnp.eye(cfg.dim)))))
        ctx.say(
            f"  seed {s}: test MSE {test_loss[-1]:.4g}, fraction in the dead zone {fractions[-1]:.3f}"
        )

    fr = spread(fractions)
    checks = [
        exact_check(
            "dead_zone_max_abs_F",
            "F(x) = 0 exactly for every test input and probe whose pre-activations lie in "
            "[-tau, tau] (max |F|)",
            measured=max(max_f),
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "dead_zone_jacobian_error",
            "the block's Jacobian is exactly I there (max |J - I|)",
            measured=max(max_jac),
            expected=0.0,
            tolerance=0.0,
        ),
        empirical_check(
            "fraction_identity_positive",
            "after training, a fraction of the test inputs lies in the dead zone (> 0 for every "
            "seed)",
            measured=fr["mean"],
            expected="> 0 for every seed",
            holds=all(f > 0 for f in fractions),
            detail=f"fraction {fmt_spread(fr)}; the teacher's own fraction "
            f"{fmt_spread(spread(teacher_fractions))}",
        ),
    ]
    figures = {
        "dead_zone_max_abs_F": max(max_f),
        "dead_zone_jacobian_error": max(max_jac),
        "fraction_identity": fr["mean"],
        "fraction_identity_spread": fr,
        "teacher_fraction_identity": spread(teacher_fractions),
        "test_mse": spread(test_loss),
        "dead_zone_test_inputs": zone_counts,
        "seeds": seeds,
    }
    plot = plot_series(
        ctx.plots / "fraction_by_seed.png",
        seeds,
        {"student (trained)": np.array(fractions), "teacher": np.array(teacher_fractions)},
        xlabel="seed",
        ylabel="fraction of test inputs in the dead zone",
        title=f"tau = {cfg.threshold}, teacher tau = {cfg.teacher_threshold}",
    )
    report = (
        "## What was measured\n\n"
        f"dim {cfg.dim}, hidden {cfg.hidden}, tau {cfg.threshold} (teacher {cfg.teacher_threshold}), "
        f"{cfg.num_train} training and {cfg.num_test} test inputs, {cfg.steps} Adam steps, seeds "
        f"{seeds}. Test MSE {fmt_spread(spread(test_loss), '.4g')}. Test inputs in the trained "
        f"block's dead zone: {zone_counts} (fraction {fmt_spread(fr)}; the teacher's "
        f"{fmt_spread(spread(teacher_fractions))}). On those inputs and on 64 probes per seed built "
        f"inside the zone, max |F(x)| = {max(max_f):.3g} and max |J - I| = {max(max_jac):.3g}.\n"
    )
    return Result(checks, figures, report, [plot])
