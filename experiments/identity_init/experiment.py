"""A zero-initialised residual stack is exactly the identity; x_L = x_0 + sum_i F_i(x_i) always.

Exact checks only, in float64: a `resode.nn.ResidualStack` of `depth` untied steps of `scheme`
over MLP fields of width `width`, first with the last layer of every field zeroed (the stack and
its Jacobian must be exactly the identity), then with random fields (the telescoping identity: the
output minus the input equals the sum of the per-block increments F_i(x_i), each computed by one
`resode.step` from the stored trajectory; for Euler also by h f_i(x_i) directly).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import resode
from resode.config import ConfigError
from resode.experiments import Result, exact_check, plot_series, to_float64
from resode.nn import MLPField, ResidualStack

CLAIM = (
    "A zero-initialised residual stack is exactly the identity, and x_L = x_0 + sum_i F_i(x_i) "
    "for any stack."
)
SOURCE = "principles.md: x_L = x_0 + sum F_i(x_i); identity by zero weights"
KEY_FIGURE = "identity_error"


@dataclasses.dataclass
class Config:
    depth: int = 16  # residual blocks (steps)
    width: int = 32  # state size (the fields' hidden width too)
    scheme: str = "euler"  # any scheme of resode.list_schemes(), explicit or implicit
    num_inputs: int = 64  # random inputs the identities are checked on
    seed: int = 0


QUICK = {"depth": 6, "width": 8, "num_inputs": 8}


def validate(cfg: Config) -> None:
    if cfg.depth < 1:
        raise ConfigError(f"depth: must be >= 1, got {cfg.depth}.")
    if cfg.width < 1:
        raise ConfigError(f"width: must be >= 1, got {cfg.width}.")
    if cfg.num_inputs < 1:
        raise ConfigError(f"num_inputs: must be >= 1, got {cfg.num_inputs}.")
    if cfg.scheme not in resode.list_schemes():
        raise ConfigError(
            f"scheme: {cfg.scheme!r} is not allowed; choose one of: "
            f"{', '.join(resode.list_schemes())}."
        )


def _stack(cfg, zero_init, key):
    root = (
        resode.Picard(tol=1e-15, max_steps=200) if resode.get_scheme(cfg.scheme).implicit else None
    )
    make = lambda k: MLPField(cfg.width, cfg.width, zero_init=zero_init, key=k)
    stack = ResidualStack(make, cfg.depth, scheme=cfg.scheme, t1=1.0, root=root, key=key)
    # Random fields are scaled down so that implicit stages contract (h * Lip(f) < 1).
    if not zero_init:
        stack = jax.tree_util.tree_map(lambda a: 0.5 * a if eqx.is_inexact_array(a) else a, stack)
    return to_float64(stack)


def run(cfg: Config, ctx) -> Result:
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(cfg.seed)
        k_zero, k_rand, k_x = jax.random.split(key, 3)
        xs = jax.random.normal(k_x, (cfg.num_inputs, cfg.width), jnp.float64)

        # 1. Zero-initialised: exactly the identity, and so is its Jacobian.
        zero = _stack(cfg, True, k_zero)
        ys = jax.vmap(lambda x: zero(x, inference=True)[0])(xs)
        identity_error = float(jnp.max(jnp.abs(ys - xs)))
        jac = jax.jacrev(lambda x: zero(x, inference=True)[0])(xs[0])
        jacobian_error = float(jnp.max(jnp.abs(jac - jnp.eye(cfg.width))))

        # 2. Random fields: the telescoping identity x_L - x_0 = sum_i F_i(x_i).
        stack = _stack(cfg, False, k_rand)
        h = stack.t1 / stack.num_steps

        def block(f, k, y):
            """Block k's increment F_k(y) by one `resode.step`, and h f_k(y) evaluated directly."""
            nxt = resode.step(
                lambda t, z, a: f(t, z), k * h, y, h, scheme=stack.scheme, root=stack.root
            )
            return nxt - y, h * f(k * h, y)

        def measure(x):
            traj = stack.trajectory(x)  # (depth + 1, width), traj[0] = x
            ks = jnp.arange(cfg.depth, dtype=traj.dtype)
            # Every block separately, from its stored input: the untied fields are vmapped.
            incs, direct = eqx.filter_vmap(block)(stack.field, ks, traj[:-1])
            return (
                jnp.max(jnp.abs(traj[-1] - x - incs.sum(0))),
                jnp.max(jnp.abs(traj[-1] - x)),
                jnp.max(jnp.abs(direct - incs)),
                jnp.linalg.norm(incs, axis=1),
            )

        tele, norms, direct_err, inc_norms = jax.jit(jax.vmap(measure))(xs)
        telescoping_error = float(jnp.max(tele))
        scale = float(jnp.max(norms))
        euler_direct = [float(jnp.max(direct_err))] if stack.scheme.name == "euler" else []
        block_norms = np.asarray(inc_norms[0])

    eps = np.finfo(np.float64).eps
    # Rounding allowance: one ulp of the state per block and stage, plus the stage solves'
    # tolerance (1e-15 relative) for implicit schemes.
    stages = len(stack.scheme.tableau.b)
    tol = 64 * eps * cfg.depth * stages * max(scale, 1.0)
    checks = [
        exact_check(
            "identity_error",
            "a zero-initialised stack maps every input to itself (max |x_L - x_0|)",
            measured=identity_error,
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "identity_jacobian_error",
            "its Jacobian is exactly the identity matrix (max |J - I|)",
            measured=jacobian_error,
            expected=0.0,
            tolerance=0.0,
        ),
        exact_check(
            "telescoping_error",
            "x_L - x_0 = sum_i F_i(x_i) for a random stack (max abs difference)",
            measured=telescoping_error,
            expected=0.0,
            tolerance=tol,
            detail=f"tolerance = 64 eps x depth x stages x max|x_L - x_0| = {tol:.3g}",
        ),
    ]
    figures = {
        "identity_error": identity_error,
        "identity_jacobian_error": jacobian_error,
        "telescoping_error": telescoping_error,
        "max_total_increment": scale,
    }
    if euler_direct:
        err = max(euler_direct)
        checks.append(
            exact_check(
                "euler_increment_error",
                "for Euler every increment is h f_i(x_i), evaluated directly on the trajectory",
                measured=err,
                expected=0.0,
                tolerance=16 * eps * max(scale, 1.0),
            )
        )
        figures["euler_increment_error"] = err
    plot = plot_series(
        ctx.plots / "block_increments.png",
        np.arange(1, cfg.depth + 1),
        {"||F_i(x_i)|| (random stack, one input)": block_norms},
        xlabel="block i",
        ylabel="norm of the increment",
        title=f"{cfg.scheme}, depth {cfg.depth}: x_L - x_0 is their sum",
    )
    report = (
        "## What was measured\n\n"
        f"A {cfg.depth}-step untied `{cfg.scheme}` stack of MLP fields (width {cfg.width}), "
        f"float64, on {cfg.num_inputs} Gaussian inputs. Zero-initialised: max |x_L - x_0| = "
        f"{identity_error:.3g} and max |J - I| = {jacobian_error:.3g} (exactly 0 expected: every "
        "branch outputs exact zeros). Random fields: the largest |x_L - x_0 - sum_i F_i(x_i)| is "
        f"{telescoping_error:.3g} against a total displacement of {scale:.3g}.\n"
    )
    return Result(checks, figures, report, [plot])
