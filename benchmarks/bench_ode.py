"""Adaptive ODE block overhead: resode.nn.ODEBlock against calling diffrax directly.

Run:   .venv/bin/python benchmarks/bench_ode.py [--quick]
Takes: about a minute on 2 CPU cores.
Shows: forward and forward+backward of a mean-square loss through an adaptive Tsit5 solve
       (PID controller, rtol 1e-3, atol 1e-6, recursive-checkpoint adjoint) of an MLP field
       (64 -> 128 -> 64), vmapped over a batch of 256 examples, for
       - resode's ODEBlock (which also returns its diagnostics: steps, NFE, success),
       - the same `diffrax.diffeqsolve` call written directly (throw=False, as ODEBlock),
       - diffrax with its defaults (throw=True: an error check on every call).
       Target: ODEBlock within 1.05x of the direct call.
"""

import argparse

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _harness import machine_summary, markdown_table, record, time_interleaved

import resode.nn as rn


def main(quick: bool = False) -> str:
    width, hidden, batch = (8, 16, 8) if quick else (64, 128, 256)
    repeats = 3 if quick else 40
    key = jax.random.PRNGKey(0)
    field = rn.MLPField(width, hidden, key=key)
    block = rn.ODEBlock(field, solver="tsit5", rtol=1e-3, atol=1e-6)
    y0 = jax.random.normal(jax.random.PRNGKey(1), (batch, width))
    target = jax.random.normal(jax.random.PRNGKey(2), (batch, width))

    def direct(f, y, throw):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(f),
            dfx.Tsit5(),
            0.0,
            1.0,
            None,
            y,
            None,
            stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-6),
            adjoint=dfx.RecursiveCheckpointAdjoint(),
            saveat=dfx.SaveAt(t1=True),
            max_steps=4096,
            throw=throw,
        )
        return sol.ys[-1]

    solves = {
        "resode ODEBlock": lambda f, y: eqx.tree_at(lambda b: b.field, block, f)(y)[0],
        "diffrax direct (throw=False)": lambda f, y: direct(f, y, False),
        "diffrax defaults (throw=True)": lambda f, y: direct(f, y, True),
    }
    fwd, both = {}, {}
    for name, solve in solves.items():
        batched = lambda f, y, solve=solve: jax.vmap(lambda yi: solve(f, yi))(y)
        f_jit = eqx.filter_jit(batched)
        g_jit = eqx.filter_jit(
            eqx.filter_value_and_grad(
                lambda f, batched=batched: jnp.mean((batched(f, y0) - target) ** 2)
            )
        )
        fwd[name] = lambda f_jit=f_jit: f_jit(field, y0)
        both[name] = lambda g_jit=g_jit: g_jit(field)
    outs = {name: np.asarray(fn()) for name, fn in fwd.items()}
    for name, out in outs.items():
        np.testing.assert_allclose(
            out, outs["diffrax direct (throw=False)"], rtol=1e-5, atol=1e-6, err_msg=name
        )
    tf = time_interleaved(fwd, repeats=repeats)
    tb = time_interleaved(both, repeats=repeats)
    base_f = tf["diffrax direct (throw=False)"].median_ms
    base_b = tb["diffrax direct (throw=False)"].median_ms
    rows = [
        [
            name,
            f"{tf[name].median_ms:.2f} [{tf[name].min_ms:.2f}, {tf[name].max_ms:.2f}]",
            f"{tb[name].median_ms:.2f} [{tb[name].min_ms:.2f}, {tb[name].max_ms:.2f}]",
            f"{tf[name].median_ms / base_f:.3f}",
            f"{tb[name].median_ms / base_b:.3f}",
        ]
        for name in solves
    ]
    _, diag = jax.vmap(block)(y0)
    out = [
        f"Machine: {machine_summary()}",
        "",
        f"Adaptive Tsit5, MLP {width} -> {hidden} -> {width}, batch {batch} (vmapped solves), "
        f"mean {float(jnp.mean(diag.solver_steps)):.1f} steps per example. Median [min, max] ms; "
        "ratio = contender / direct diffrax call.",
        "",
        markdown_table(
            ["contender", "forward ms", "fwd+bwd ms", "fwd ratio", "fwd+bwd ratio"], rows
        ),
        "",
        record(
            "ode",
            "ODEBlock / direct diffrax, forward",
            tf["resode ODEBlock"].median_ms / base_f,
            "<=",
            1.05,
        ),
        record(
            "ode",
            "ODEBlock / direct diffrax, fwd+bwd",
            tb["resode ODEBlock"].median_ms / base_b,
            "<=",
            1.05,
        ),
    ]
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    print(main(quick=parser.parse_args().quick))
