"""Forward Euler amplifies stiff modes; backward Euler never does, and is non-expansive on monotone
fields.

A linear field f(y) = A y with A normal (A = Q B Q^T, Q orthogonal, B block diagonal with real
eigenvalues lambda <= 0 and complex pairs a +- ib, a <= 0) makes the gain of one block, the
spectral norm of its Jacobian, a closed form: max |1 + h lambda| for an Euler block y + h A y and
max 1 / |1 - h lambda| for a backward-Euler block y_next = y + h A y_next. Both blocks run through
`resode.step` in float64 and their Jacobians are measured by reverse-mode autodiff (the implicit stage is differentiated by the implicit function theorem) (exact checks, at `step_size`
and over a range of h). A nonlinear monotone field F(y) = -W^T tanh(W y + b) + S y - m y (S skew,
so -(F(x) - F(y)).(x - y) >= m |x - y|^2) makes every backward-Euler block non-expansive for every
h: over random input pairs, |y1 - y2| <= |x1 - x2| (exact, up to the stage solver's tolerance).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import resode
from resode.config import ConfigError
from resode.experiments import Result, exact_check, plot_series

CLAIM = (
    "Forward Euler's per-block gain is max|1 + h lambda| (> 1 once h|lambda| > 2 on the real "
    "axis); backward Euler's is max 1/|1 - h lambda| <= 1 for every h; a backward-Euler block "
    "with a monotone field is non-expansive for any h."
)
SOURCE = "applications.md: implicit ResNets x_{k+1} = x_k + F(x_{k+1}), A-stability, non-expansive"
KEY_FIGURE = "backward_euler_gain"


@dataclasses.dataclass
class Config:
    step_size: float = 0.5  # h of the blocks whose gains are the headline figures
    seed: int = 0
    dim: int = 8  # state size (real eigenvalues and complex pairs)
    max_rate: float = 8.0  # |lambda| of the field's eigenvalues go up to this
    num_pairs: int = 256  # random input pairs for the expansion measurement
    hidden: int = 16  # width of W in the monotone field
    margin: float = 0.0  # m of the monotone field (0: monotone, > 0: strongly monotone)
    steps_sizes_plot: int = 25  # h values of the gain-vs-h sweep (log-spaced over 1e-2 .. 1e2)


QUICK = {"num_pairs": 32, "steps_sizes_plot": 7}


def validate(cfg: Config) -> None:
    if not cfg.step_size > 0:
        raise ConfigError(f"step_size: must be > 0, got {cfg.step_size}.")
    if not cfg.max_rate > 0:
        raise ConfigError(f"max_rate: must be > 0, got {cfg.max_rate}.")
    if cfg.margin < 0:
        raise ConfigError(f"margin: must be >= 0, got {cfg.margin}.")
    if cfg.dim < 2:
        raise ConfigError(
            f"dim: must be >= 2 (a real eigenvalue and a complex pair), got {cfg.dim}."
        )
    for key in ("num_pairs", "hidden", "steps_sizes_plot"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def _normal_field(rng, dim, max_rate):
    """A real normal matrix with eigenvalues in the closed left half-plane: its eigenvalues and
    the matrix. The first eigenvalue is real and equals -max_rate (the stiffest real mode)."""
    blocks, eigs = [], []
    i = 0
    while i < dim:
        if i == 0 or dim - i == 1:
            lam = -max_rate if i == 0 else -rng.uniform(0, max_rate)
            blocks.append(np.array([[lam]]))
            eigs.append(complex(lam))
            i += 1
        else:
            a, b = -rng.uniform(0, max_rate / 2), rng.uniform(0, max_rate)
            if i == 1:
                a = 0.0  # one purely imaginary pair: Euler's worst case, backward Euler's gain 1
            blocks.append(np.array([[a, b], [-b, a]]))
            eigs += [complex(a, b), complex(a, -b)]
            i += 2
    b_mat = np.zeros((dim, dim))
    k = 0
    for blk in blocks:
        n = blk.shape[0]
        b_mat[k : k + n, k : k + n] = blk
        k += n
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return np.array(eigs), q @ b_mat @ q.T


def run(cfg: Config, ctx) -> Result:
    rng = np.random.default_rng(cfg.seed)
    eigs, a_mat = _normal_field(rng, cfg.dim, cfg.max_rate)
    w = rng.normal(size=(cfg.hidden, cfg.dim)) / np.sqrt(cfg.dim)
    bias = rng.normal(size=cfg.hidden)
    s = rng.normal(size=(cfg.dim, cfg.dim))
    skew = (s - s.T) / 2
    x1 = rng.normal(size=(cfg.num_pairs, cfg.dim)) * 2.0
    x2 = x1 + rng.normal(size=(cfg.num_pairs, cfg.dim)) * rng.uniform(0.01, 2.0, (cfg.num_pairs, 1))
    # Backtracking Newton: full Newton steps oscillate on saturating fields at large h (measured
    # below as `plain_newton_failures`).
    root = resode.Newton(tol=1e-13, max_steps=100, line_search=True)
    plain_root = resode.Newton(tol=1e-13, max_steps=100)

    with jax.enable_x64(True):
        A = jnp.asarray(a_mat)
        W, B, S = jnp.asarray(w), jnp.asarray(bias), jnp.asarray(skew)

        def linear(t, y, args):
            return A @ y

        def monotone(t, y, args):
            return -W.T @ jnp.tanh(W @ y + B) + S @ y - cfg.margin * y

        def gain(scheme):
            @jax.jit
            def g(h):
                jac = jax.jacrev(lambda y: resode.step(linear, 0.0, y, h, scheme=scheme, root=root))
                return jnp.linalg.norm(jac(jnp.zeros(cfg.dim)), 2)

            return g

        euler, backward = gain("euler"), gain("backward_euler")

        @jax.jit
        def expansion(h):
            def one(scheme, x):
                y, st = resode.step(
                    monotone, 0.0, x, h, scheme=scheme, root=root, return_stats=True
                )
                return y, st

            def pair(a, b):
                ya, sa = one("backward_euler", a)
                yb, sb = one("backward_euler", b)
                ea, _ = one("euler", a)
                eb, _ = one("euler", b)
                dx = jnp.linalg.norm(a - b)
                ok = jnp.logical_and(sa.root_converged, sb.root_converged)
                _, sp = resode.step(
                    monotone,
                    0.0,
                    a,
                    h,
                    scheme="backward_euler",
                    root=plain_root,
                    return_stats=True,
                )
                return (
                    jnp.linalg.norm(ya - yb) / dx,
                    jnp.linalg.norm(ea - eb) / dx,
                    ok,
                    ~sp.root_converged,
                )

            return jax.vmap(pair)(jnp.asarray(x1), jnp.asarray(x2))

        h0 = cfg.step_size
        euler_gain = float(euler(h0))
        be_gain = float(backward(h0))
        hs = np.geomspace(1e-2, 1e2, cfg.steps_sizes_plot)
        sweep_euler = np.array([float(euler(h)) for h in hs])
        sweep_be = np.array([float(backward(h)) for h in hs])
        exp_hs = sorted({h0, 0.1 * h0, 10 * h0, 100.0})
        ratios = {h: [np.asarray(v) for v in expansion(h)] for h in exp_hs}
        # The stiffest real mode (lambda = -max_rate) is unstable for Euler beyond h = 2/max_rate.
        beyond_gain = float(euler(1.01 * 2.0 / cfg.max_rate))

    euler_theory = float(np.max(np.abs(1 + h0 * eigs)))
    be_theory = float(np.max(1 / np.abs(1 - h0 * eigs)))
    sweep_euler_theory = np.max(np.abs(1 + hs[:, None] * eigs[None]), axis=1)
    sweep_be_theory = np.max(1 / np.abs(1 - hs[:, None] * eigs[None]), axis=1)
    # Stability function of each scheme (resode's) against the closed forms 1 + z and 1/(1 - z).
    z = hs[:, None] * eigs[None]
    r_err = max(  # relative: |z| reaches 1e2 max|lambda|
        float(np.max(np.abs(resode.stability_function(name, z) / closed - 1)))
        for name, closed in (("euler", 1 + z), ("backward_euler", 1 / (1 - z)))
    )
    implicit_max = max(float(r[0].max()) for r in ratios.values())
    explicit_max = {h: float(r[1].max()) for h, r in ratios.items()}
    all_converged = all(bool(r[2].all()) for r in ratios.values())
    plain_failures = {f"{h:.4g}": int(r[3].sum()) for h, r in ratios.items()}
    eps = np.finfo(np.float64).eps
    tol_gain = 1e3 * eps * max(1.0, euler_theory)
    real_threshold = 2.0 / cfg.max_rate  # Euler's stiffest real mode is unstable beyond this h
    checks = [
        exact_check(
            "euler_gain",
            f"the Euler block's gain at h = {h0} is max|1 + h lambda| over the field's eigenvalues",
            measured=euler_gain,
            expected=euler_theory,
            tolerance=tol_gain,
        ),
        exact_check(
            "backward_euler_gain",
            f"the backward-Euler block's gain at h = {h0} is max 1/|1 - h lambda|",
            measured=be_gain,
            expected=be_theory,
            tolerance=1e3 * eps,
        ),
        exact_check(
            "backward_euler_gain_at_most_one",
            f"backward Euler's gain is <= 1 at every h tried ({len(hs)} values in [1e-2, 1e2])",
            measured=float(sweep_be.max()),
            expected=1.0,
            tolerance=1e3 * eps,
            compare="le",
        ),
        exact_check(
            "gain_sweep_matches_theory",
            "over the h sweep, both measured gains equal their closed forms (largest relative "
            "difference)",
            measured=float(
                max(
                    np.max(np.abs(sweep_euler - sweep_euler_theory) / sweep_euler_theory),
                    np.max(np.abs(sweep_be - sweep_be_theory) / sweep_be_theory),
                )
            ),
            expected=0.0,
            tolerance=1e4 * eps,
        ),
        exact_check(
            "euler_unstable_beyond_2_over_lambda",
            f"Euler's gain exceeds 1 at h = {1.01 * real_threshold:.4g} (just beyond 2/|lambda| "
            f"of the stiffest real mode, lambda = {-cfg.max_rate:g}), computed by resode",
            measured=beyond_gain,
            expected=1.0,
            tolerance=0.0,
            compare="ge",
        ),
        exact_check(
            "stability_functions",
            "resode.stability_function of euler and backward_euler equals 1 + z and 1/(1 - z) "
            "(largest relative difference over the sweep)",
            measured=r_err,
            expected=0.0,
            tolerance=1e3 * eps,
        ),
        exact_check(
            "implicit_max_expansion",
            f"backward-Euler blocks of a monotone field (margin m = {cfg.margin:g}) are "
            f"non-expansive: max |y1 - y2| / |x1 - x2| over {cfg.num_pairs} pairs and h in "
            f"{[float(f'{h:.4g}') for h in exp_hs]}",
            measured=implicit_max,
            expected=1.0 / (1.0 + min(exp_hs) * cfg.margin),
            tolerance=1e-9,
            compare="le",
            detail="every stage solve converged" if all_converged else "a stage solve failed",
        ),
    ]
    figures = {
        "euler_gain": euler_gain,
        "euler_gain_theory": euler_theory,
        "backward_euler_gain": be_gain,
        "backward_euler_gain_theory": be_theory,
        "implicit_max_expansion": implicit_max,
        "explicit_max_expansion": {f"{h:.4g}": v for h, v in explicit_max.items()},
        "stage_solves_converged": all_converged,
        "plain_newton_failures": plain_failures,
        "eigenvalues": [[float(e.real), float(e.imag)] for e in eigs],
        "euler_stable_up_to_h": float(hs[sweep_euler_theory <= 1].max())
        if (sweep_euler_theory <= 1).any()
        else None,
    }
    plot = plot_series(
        ctx.plots / "gain_vs_step.png",
        hs,
        {"forward Euler (measured)": sweep_euler, "backward Euler (measured)": sweep_be},
        xlabel="step size h",
        ylabel="gain of one block (spectral norm)",
        title=f"linear field, dim {cfg.dim}, max|lambda| = {cfg.max_rate:g}",
        logx=True,
        logy=True,
        reference={
            "max|1 + h lambda|": sweep_euler_theory,
            "max 1/|1 - h lambda|": sweep_be_theory,
        },
    )
    report = (
        "## What was measured\n\n"
        f"Linear field, {cfg.dim} eigenvalues with max |lambda| = {cfg.max_rate:g} (one purely "
        f"imaginary pair). At h = {h0}: Euler gain {euler_gain:.6g} (theory {euler_theory:.6g}), "
        f"backward-Euler gain {be_gain:.6g} (theory {be_theory:.6g}). Over {len(hs)} step sizes "
        f"in [1e-2, 1e2], backward Euler's largest gain is {sweep_be.max():.6g}; Euler's gain "
        + (
            f"stays <= 1 only up to h = {figures['euler_stable_up_to_h']:.4g}"
            if figures["euler_stable_up_to_h"] is not None
            else "exceeds 1 at every h tried (a purely imaginary pair of eigenvalues makes "
            "|1 + h lambda| > 1 for every h > 0)"
        )
        + ".\n\n"
        f"Monotone field (margin {cfg.margin:g}), {cfg.num_pairs} random input pairs: the largest "
        f"expansion of a backward-Euler block is {implicit_max:.6g}; Euler blocks of the same "
        "field expand by up to "
        + ", ".join(f"{v:.4g} (h = {h:.4g})" for h, v in explicit_max.items())
        + ".\n\n"
        "Stage solver: Newton with a backtracking line search (every solve converged: "
        f"{all_converged}). Full-step Newton on the same stages fails on "
        + ", ".join(f"{v} of {cfg.num_pairs} inputs at h = {h}" for h, v in plain_failures.items())
        + ".\n"
    )
    return Result(checks, figures, report, [plot])
