"""Propagating i psi' = H psi with residual steps: Euler inflates, backward Euler damps, the
trapezoid (Crank-Nicolson) keeps the norm.

H is a 1-D tight-binding Hamiltonian on `grid` sites (hopping -1 between neighbours, open ends)
plus a random on-site potential of strength `disorder`; the state is a complex Gaussian wave
packet with unit norm, in complex128. `resode.integrate` runs the field f(t, psi) = -i H psi with
`euler`, `backward_euler` and `trapezoid` for `num_steps` steps of `step_size`. In H's eigenbasis
(energies E_k) one step multiplies mode k by 1 - i h E_k (Euler: modulus sqrt(1 + h^2 E_k^2)),
1 / (1 + i h E_k) (backward Euler: divides by it) or (1 - i h E_k / 2) / (1 + i h E_k / 2)
(trapezoid: modulus 1). Exact checks: every mode's growth factor against these, the final norms
against sqrt(sum |c_k|^2 (1 + h^2 E_k^2)^(+-n)), the trapezoid's norm against 1 and its error
against the exact propagator exp(-i H T) against the closed form; and the trapezoid's order,
measured with three step sizes small enough for the asymptotic regime (h ||H|| <= 0.2) over ten
natural periods, against 2.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import resode
from resode.config import ConfigError
from resode.experiments import Result, exact_check, plot_series

CLAIM = (
    "For i psi' = H psi, forward Euler multiplies each eigenmode's norm by sqrt(1 + h^2 E^2) per "
    "step, backward Euler divides by it, and the trapezoid rule (Crank-Nicolson) preserves the "
    "norm to rounding and is second-order accurate."
)
SOURCE = "applications.md: rt-TDDFT propagation as a residual step (a quantum propagator)"
KEY_FIGURE = "norm_euler"

SCHEMES = ("euler", "backward_euler", "trapezoid")
MODULUS = {
    "euler": "sqrt(1 + h^2 E^2)",
    "backward_euler": "1/sqrt(1 + h^2 E^2)",
    "trapezoid": "1",
}


@dataclasses.dataclass
class Config:
    step_size: float = 0.1  # h (in units of 1 / hopping)
    num_steps: int = 200
    grid: int = 64  # lattice sites
    seed: int = 0
    disorder: float = 1.0  # on-site potential ~ U(-disorder, disorder)
    packet_width: float = 4.0  # sites
    momentum: float = 1.0  # the packet's wave number (radians per site)


QUICK = {"num_steps": 40, "grid": 24}


def validate(cfg: Config) -> None:
    if not cfg.step_size > 0:
        raise ConfigError(f"step_size: must be > 0, got {cfg.step_size}.")
    if cfg.num_steps < 1:
        raise ConfigError(f"num_steps: must be >= 1, got {cfg.num_steps}.")
    if cfg.grid < 2:
        raise ConfigError(f"grid: must be >= 2 sites, got {cfg.grid}.")
    if cfg.disorder < 0 or not cfg.packet_width > 0:
        raise ConfigError("disorder: must be >= 0; packet_width: must be > 0.")


def hamiltonian(grid: int, disorder: float, rng) -> np.ndarray:
    hop = -np.ones(grid - 1)
    return np.diag(rng.uniform(-disorder, disorder, grid)) + np.diag(hop, 1) + np.diag(hop, -1)


def run(cfg: Config, ctx) -> Result:
    rng = np.random.default_rng(cfg.seed)
    H = hamiltonian(cfg.grid, cfg.disorder, rng)
    sites = np.arange(cfg.grid)
    centre = cfg.grid / 2
    psi0 = np.exp(-((sites - centre) ** 2) / (2 * cfg.packet_width**2) + 1j * cfg.momentum * sites)
    psi0 /= np.linalg.norm(psi0)
    energies, modes = np.linalg.eigh(H)
    c0 = modes.T @ psi0
    h, n = cfg.step_size, cfg.num_steps
    T = h * n
    eps = np.finfo(np.float64).eps
    root = resode.Newton(tol=1e-15, max_steps=10)

    with jax.enable_x64(True):
        Hj = jnp.asarray(H)

        def field(t, psi, args):
            return -1j * (Hj @ psi)

        def trajectory(scheme, steps, t1):
            _, ys = resode.integrate(
                field, jnp.asarray(psi0), 0.0, t1, steps, scheme=scheme, root=root,
                save_trajectory=True,
            )  # fmt: skip
            return np.asarray(ys)

        trajs = {s: trajectory(s, n, T) for s in SCHEMES}
        # Order of the trapezoid: ten natural periods, h ||H|| <= 0.2, halved twice.
        h_norm = float(np.max(np.abs(energies)))
        t_order = 10.0 / h_norm
        n_order = int(np.ceil(t_order / min(h, 0.2 / h_norm)))
        exact_order = modes @ (np.exp(-1j * energies * t_order) * c0)

        @jax.jit
        def trapezoid_final(steps):  # one compilation for every step count
            dt = t_order / steps.astype(jnp.float64)
            return jax.lax.fori_loop(
                0,
                steps,
                lambda i, y: resode.step(field, i * dt, y, dt, scheme="trapezoid", root=root),
                jnp.asarray(psi0),
            )

        order_errs = [
            float(
                np.linalg.norm(
                    np.asarray(trapezoid_final(jnp.asarray(n_order * 2**k))) - exact_order
                )
            )
            for k in range(3)
        ]

    norms = {s: np.linalg.norm(trajs[s], axis=1) for s in SCHEMES}
    growth = {
        "euler": np.sqrt(1 + (h * energies) ** 2),
        "backward_euler": 1 / np.sqrt(1 + (h * energies) ** 2),
        "trapezoid": np.ones_like(energies),
    }
    steps = np.arange(n + 1)
    norm_theory = {
        s: np.sqrt(np.sum(np.abs(c0) ** 2 * growth[s][None, :] ** (2 * steps[:, None]), axis=1))
        for s in SCHEMES
    }
    # Every eigenmode after n steps against c_k(0) R_k^n with the scheme's exact one-step factor
    # R_k (1 - ihE_k, 1/(1 + ihE_k), (1 - ihE_k/2)/(1 + ihE_k/2)): modulus and phase, relative to
    # the final norm (a mode far below the norm is only known to the rounding of the whole state).
    factor = {
        "euler": 1 - 1j * h * energies,
        "backward_euler": 1 / (1 + 1j * h * energies),
        "trapezoid": (1 - 0.5j * h * energies) / (1 + 0.5j * h * energies),
    }
    mode_err = {}
    for s in SCHEMES:
        cn = modes.T @ trajs[s][-1]
        mode_err[s] = float(np.max(np.abs(cn - c0 * factor[s] ** n)) / np.linalg.norm(cn))
    r_cn = factor["trapezoid"]
    exact_T = modes @ (np.exp(-1j * energies * T) * c0)
    error_cn = float(np.linalg.norm(trajs["trapezoid"][-1] - exact_T))
    error_cn_theory = float(np.linalg.norm(c0 * (r_cn**n - np.exp(-1j * energies * T))))
    order = float(np.log2(order_errs[1] / order_errs[2]))
    rounding = 1e2 * eps * max(1, n)  # per-step rounding of a complex128 state, accumulated
    checks = [
        exact_check(
            f"mode_growth_{s}",
            f"{s}: after {n} steps every eigenmode is c_k(0) R(-ihE_k)^n, R the scheme's "
            f"one-step factor, of modulus {MODULUS[s]} per step (largest |difference| / norm)",
            measured=mode_err[s],
            expected=0.0,
            tolerance=rounding,
        )
        for s in SCHEMES
    ]
    checks += [
        exact_check(
            "norm_euler",
            "the final norm under Euler is sqrt(sum_k |c_k|^2 (1 + h^2 E_k^2)^n) (relative)",
            measured=norms["euler"][-1] / norm_theory["euler"][-1] - 1,
            expected=0.0,
            tolerance=rounding,
        ),
        exact_check(
            "norm_backward_euler",
            "the final norm under backward Euler is sqrt(sum_k |c_k|^2 (1 + h^2 E_k^2)^-n) "
            "(relative)",
            measured=norms["backward_euler"][-1] / norm_theory["backward_euler"][-1] - 1,
            expected=0.0,
            tolerance=rounding,
        ),
        exact_check(
            "norm_trapezoid",
            f"the trapezoid rule keeps the norm 1 over {n} steps (largest |norm - 1|)",
            measured=float(np.max(np.abs(norms["trapezoid"] - 1))),
            expected=0.0,
            tolerance=rounding,
        ),
        exact_check(
            "error_trapezoid",
            "the trapezoid's error against exp(-iHT) psi0 equals the closed form "
            "|sum_k c_k (r_k^n - exp(-i E_k T))|, r_k = (1 - ihE_k/2)/(1 + ihE_k/2)",
            measured=error_cn,
            expected=error_cn_theory,
            tolerance=rounding + 1e-12 * error_cn_theory,
        ),
        exact_check(
            "trapezoid_order",
            f"the trapezoid is second-order: log2 of the error ratio between h = "
            f"{t_order / (2 * n_order):.3g} and {t_order / (4 * n_order):.3g} (T = 10/||H||)",
            measured=order,
            expected=2.0,
            tolerance=0.05,
        ),
    ]
    figures = {
        "norm_euler": float(norms["euler"][-1]),
        "norm_euler_theory": float(norm_theory["euler"][-1]),
        "norm_backward_euler": float(norms["backward_euler"][-1]),
        "norm_backward_euler_theory": float(norm_theory["backward_euler"][-1]),
        "norm_trapezoid": float(norms["trapezoid"][-1]),
        "error_trapezoid": error_cn,
        "error_trapezoid_theory": error_cn_theory,
        "error_euler": float(np.linalg.norm(trajs["euler"][-1] - exact_T)),
        "error_backward_euler": float(np.linalg.norm(trajs["backward_euler"][-1] - exact_T)),
        "trapezoid_order": order,
        "order_errors": order_errs,
        "energy_range": [float(energies.min()), float(energies.max())],
    }
    plot = plot_series(
        ctx.plots / "norm_vs_step.png",
        steps,
        {s: norms[s] for s in SCHEMES},
        xlabel="step",
        ylabel="||psi||",
        title=f"tight binding, {cfg.grid} sites, h = {h}",
        logy=True,
        reference={f"theory ({s})": norm_theory[s] for s in ("euler", "backward_euler")},
    )
    report = (
        "## What was measured\n\n"
        f"{cfg.grid} sites, energies in [{energies.min():.3f}, {energies.max():.3f}], "
        f"{n} steps of h = {h} (T = {T:g}). Final norms from a unit packet: Euler "
        f"{figures['norm_euler']:.6g} (theory {figures['norm_euler_theory']:.6g}), backward Euler "
        f"{figures['norm_backward_euler']:.6g} (theory {figures['norm_backward_euler_theory']:.6g}"
        f"), trapezoid {figures['norm_trapezoid']:.16f}. Errors against exp(-iHT) psi0: Euler "
        f"{figures['error_euler']:.3g}, backward Euler {figures['error_backward_euler']:.3g}, "
        f"trapezoid {error_cn:.3g} (closed form {error_cn_theory:.3g}). Trapezoid errors at three "
        f"halved steps: {', '.join(f'{e:.3g}' for e in order_errs)}: order {order:.4f}.\n"
    )
    return Result(checks, figures, report, [plot])
