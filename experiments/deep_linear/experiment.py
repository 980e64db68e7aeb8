"""Deep linear residual stacks at zero initialisation: identical block gradients, update x L.

A `resode.nn.ResidualStack` of `depth` untied linear Euler blocks x <- x + W_k x (h = 1) with every
W_k = 0 is the identity. On a least-squares loss 1/2 mean ||M x - y||^2 (M the end-to-end map,
y = A x for a random A) every block receives the same gradient G = (M - A) Sigma_x at M = I, and one
gradient step moves the end-to-end map, to first order, by sum_k dW_k = L dW: `depth` times what one
block's weights moved. Both are exact (float64); the second-order remainder is reported.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from resode.config import ConfigError
from resode.experiments import Result, exact_check, plot_series
from resode.nn import FunctionField, ResidualStack

CLAIM = (
    "L zero-initialised linear residual blocks receive identical gradients, and the first update "
    "of the end-to-end map is L times one block's."
)
SOURCE = "principles.md: deep linear stacks at zero initialisation"
KEY_FIGURE = "update_ratio"


@dataclasses.dataclass
class Config:
    depth: int = 16
    dim: int = 16
    num_examples: int = 256
    lr: float = 1e-3  # the gradient step whose first-order effect is measured
    seed: int = 0


QUICK = {"depth": 6, "dim": 6, "num_examples": 32}


def validate(cfg: Config) -> None:
    for key in ("depth", "dim", "num_examples"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}.")


def _linear(w, t, y, args):
    return w @ y


def run(cfg: Config, ctx) -> Result:
    L, d = cfg.depth, cfg.dim
    with jax.enable_x64(True):
        k_a, k_x, k_s = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
        a = jax.random.normal(k_a, (d, d), jnp.float64) / np.sqrt(d)
        x = jax.random.normal(k_x, (cfg.num_examples, d), jnp.float64)
        y = x @ a.T
        stack = ResidualStack(
            lambda k: FunctionField(jnp.zeros((d, d), jnp.float64), _linear),
            L,
            t1=float(L),
            key=k_s,
        )
        params, static = eqx.partition(stack, eqx.is_inexact_array)

        def end_to_end(p):  # M: the stack applied to the basis vectors, as a matrix
            s = eqx.combine(p, static)
            return jax.vmap(lambda e: s(e, inference=True)[0])(jnp.eye(d)).T

        def loss(p):
            s = eqx.combine(p, static)
            out = jax.vmap(lambda xi: s(xi, inference=True)[0])(x)
            return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=1))

        grads = jax.grad(loss)(params)
        g = grads.field.params  # (L, d, d): block k's gradient
        g_mean = g.mean(0)
        spread = float(jnp.max(jnp.linalg.norm((g - g_mean).reshape(L, -1), axis=1)))
        spread /= float(jnp.linalg.norm(g_mean))
        # The closed form at M = I: G = (I - A) Sigma_x with Sigma_x = mean x x^T.
        g_theory = (jnp.eye(d) - a) @ (x.T @ x) / cfg.num_examples
        theory_err = float(jnp.max(jnp.abs(g - g_theory)) / jnp.max(jnp.abs(g_theory)))

        step = jax.tree_util.tree_map(lambda v: -cfg.lr * v, grads)
        m0, dm = jax.jvp(end_to_end, (params,), (step,))
        one_block = jnp.linalg.norm(step.field.params[0])
        update_ratio = float(jnp.linalg.norm(dm) / one_block)
        identity_err = float(jnp.max(jnp.abs(m0 - jnp.eye(d))))
        actual = end_to_end(jax.tree_util.tree_map(jnp.add, params, step)) - m0
        remainder = float(jnp.linalg.norm(actual - dm) / jnp.linalg.norm(dm))

        # Per block, the first-order change of M from that block alone is its own update.
        def block_change(mask):  # mask: one-hot over the blocks
            only = jax.tree_util.tree_map(lambda v: v * mask[:, None, None], step)
            return jnp.linalg.norm(jax.jvp(end_to_end, (params,), (only,))[1])

        per_block = np.asarray(jax.jit(jax.vmap(block_change))(jnp.eye(L))) / float(one_block)

    eps = np.finfo(np.float64).eps
    checks = [
        exact_check(
            "identity_at_init",
            "the zero-initialised stack is the identity map (max |M - I|)",
            measured=identity_err,
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "block_grad_spread",
            "every block's gradient equals the mean block gradient (max ||G_k - mean|| / ||mean||)",
            measured=spread,
            expected=0.0,
            tolerance=64 * eps * L,
        ),
        exact_check(
            "block_grad_closed_form",
            "each block gradient is (I - A) Sigma_x (max relative entry error)",
            measured=theory_err,
            expected=0.0,
            tolerance=64 * eps * d,
        ),
        exact_check(
            "update_ratio",
            "the first-order change of M under one gradient step is L times one block's update "
            "(||dM|| / ||dW_k||)",
            measured=update_ratio,
            expected=float(L),
            tolerance=64 * eps * L,
        ),
    ]
    figures = {
        "block_grad_spread": spread,
        "update_ratio": update_ratio,
        "depth": L,
        "second_order_remainder": remainder,
        "block_grad_closed_form_error": theory_err,
    }
    plot = plot_series(
        ctx.plots / "cumulative_update.png",
        np.arange(1, L + 1),
        {"||dM|| from blocks 1..k / ||dW||": np.cumsum(per_block)},
        xlabel="blocks k",
        ylabel="first-order change of M",
        title=f"zero init, depth {L}: every block adds one update",
        reference={"k": np.arange(1, L + 1)},
    )
    report = (
        "## What was measured\n\n"
        f"depth {L}, dim {d}, {cfg.num_examples} examples, step {cfg.lr}. Block gradients agree to "
        f"{spread:.3g} (relative) and match the closed form (I - A) Sigma_x to {theory_err:.3g}; "
        f"||dM|| / ||dW_k|| = {update_ratio:.15g} (expected {L}). After the actual step the "
        f"end-to-end map differs from the first-order prediction by {remainder:.3g} (relative): "
        "the products of two or more updates, second order in the step.\n"
    )
    return Result(checks, figures, report, [plot])
