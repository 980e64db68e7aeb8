"""Implicit schemes on a stiff problem: resode against diffrax at matched error.

Run:   .venv/bin/python benchmarks/bench_implicit.py [--quick]
Takes: about a minute and a half on 2 CPU cores.
Shows: dy/dt = -L y + tanh(W^T y) on [0, 1], L diagonal with eigenvalues 1 ... 1000 (stiff),
       state dim 32, batch 64 (each example solved on its own, vmapped), float32. For each
       method, the fewest steps (fixed-step methods: 4, 8, 16, ...) or the loosest tolerance
       (adaptive Kvaerno5: 1e-2, 1e-3, ...) whose relative L2 error against a fine reference is
       at most 1e-3, and the forward time there: resode backward Euler, trapezoid and
       Gauss-Legendre 4 (Newton stage solves) against diffrax's ImplicitEuler (constant steps)
       and Kvaerno5 (adaptive, PID). Ratios: diffrax / resode at matched error (above 1: resode
       is faster).
"""

import argparse

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from _harness import machine_summary, markdown_table, record, time_call

import resode

TOL = 1e-3


def problem(dim, batch):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    lam = jnp.logspace(0, 3, dim)
    W = 0.5 * jax.random.normal(k1, (dim, dim)) / np.sqrt(dim)
    y0 = jax.random.normal(k2, (batch, dim))

    def f(t, y, args):
        lam, W = args
        return -lam * y + jnp.tanh(W.T @ y)

    return f, y0, (lam, W)


def per_example(solve):
    """Each example solved on its own (vmapped), as a model's layer would: stage systems of the
    state's dimension, not of the whole batch."""
    return jax.jit(jax.vmap(solve, in_axes=(0, None)))


def resode_solver(scheme):
    def make(f, n):
        return per_example(
            lambda y0, args: resode.integrate(f, y0, 0.0, 1.0, n, args, scheme=scheme)
        )

    return make


def diffrax_fixed(f, n):
    def solve(y0, args):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(f),
            # Fixed steps need the root finder's tolerances set; resode's stage solves stop at a
            # relative residual of 100 float32 epsilons (about 1e-5).
            dfx.ImplicitEuler(root_finder=dfx.VeryChord(rtol=1e-5, atol=1e-7, norm=optx.max_norm)),
            0.0,
            1.0,
            1.0 / n,
            y0,
            args,
            stepsize_controller=dfx.ConstantStepSize(),
            max_steps=n,
            throw=False,  # a failed stage solve gives NaN: that step count does not qualify
        )
        return sol.ys[-1]

    return per_example(solve)


def diffrax_kvaerno(f, rtol):
    def solve(y0, args):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(f),
            dfx.Kvaerno5(),
            0.0,
            1.0,
            None,
            y0,
            args,
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=rtol * 1e-2),
            max_steps=100_000,
            throw=False,
        )
        return sol.ys[-1]

    return per_example(solve)


def main(quick: bool = False) -> str:
    dim, batch = (8, 4) if quick else (32, 64)
    tol = 0.3 if quick else TOL
    repeats = 3 if quick else 20
    f, y0, args = problem(dim, batch)
    ref = resode_solver("gauss_legendre4")(f, 64 if quick else 4096)(y0, args)

    def err(y):
        e = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
        return e if np.isfinite(e) else float("inf")

    steps = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    fixed = {
        "resode backward_euler": resode_solver("backward_euler"),
        "resode trapezoid": resode_solver("trapezoid"),
        "resode gauss_legendre4": resode_solver("gauss_legendre4"),
        "diffrax ImplicitEuler": diffrax_fixed,
    }
    found = {}
    for name, make in fixed.items():
        for n in steps:
            fn = make(f, n)
            e = err(fn(y0, args))
            if e <= tol:
                found[name] = (
                    f"{n} steps",
                    e,
                    time_call(lambda fn=fn: fn(y0, args), repeats=repeats),
                )
                break
        else:
            found[name] = (f"> {steps[-1]} steps", e, None)
    for rtol in [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]:
        fn = diffrax_kvaerno(f, rtol)
        e = err(fn(y0, args))
        if e <= tol:
            found["diffrax Kvaerno5 (adaptive)"] = (
                f"rtol {rtol:g}",
                e,
                time_call(lambda fn=fn: fn(y0, args), repeats=repeats),
            )
            break
    rows = [
        [
            name,
            setting,
            f"{e:.1e}",
            "-" if t is None else f"{t.median_ms:.2f} [{t.min_ms:.2f}, {t.max_ms:.2f}]",
        ]
        for name, (setting, e, t) in found.items()
    ]
    ms = {name: t.median_ms for name, (_, _, t) in found.items() if t is not None}
    out = [
        f"Machine: {machine_summary()}",
        "",
        f"Stiff dy/dt = -L y + tanh(W^T y), eigenvalues of L from 1 to 1000, dim {dim}, batch "
        f"{batch}, float32; cheapest setting with relative error <= {tol:g}; forward time "
        "median [min, max] ms.",
        "",
        markdown_table(["method", "setting", "error", "time ms"], rows),
        "",
    ]
    if "resode backward_euler" in ms and "diffrax ImplicitEuler" in ms:
        out.append(
            record(
                "implicit",
                "diffrax ImplicitEuler / resode backward_euler at matched error",
                ms["diffrax ImplicitEuler"] / ms["resode backward_euler"],
            )
        )
    best = min((v, k) for k, v in ms.items() if k.startswith("resode"))
    if "diffrax Kvaerno5 (adaptive)" in ms:
        out.append(
            record(
                "implicit",
                f"diffrax Kvaerno5 / best resode ({best[1].split()[1]}) at matched error",
                ms["diffrax Kvaerno5 (adaptive)"] / best[0],
            )
        )
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    print(main(quick=parser.parse_args().quick))
