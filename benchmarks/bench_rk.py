"""Fixed-step RK4: resode against a hand-written lax.scan, diffrax and torchdiffeq.

Run:   make bench        (or: .venv/bin/python benchmarks/bench_rk.py [--quick])
Takes: about a minute on 2 CPU cores (torchdiffeq is skipped if torch is not installed).
Shows: RK4, 20 steps, batch 256, MLP field 64 -> 128 -> 64 (tanh), float32, forward and
       forward+backward of a mean-square loss; medians with min/max, and the ratios
       resode / hand-written scan (target <= 1.10), diffrax / resode (target >= 1.5),
       torchdiffeq / resode (target >= 1.0), and compile time at 1000 vs 10 steps (target <= 1.5).
"""

import argparse
import functools
import statistics
from pathlib import Path

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
from _harness import (
    compile_seconds,
    machine_summary,
    markdown_table,
    record,
    save_plot,
    time_call,
    time_interleaved,
)

import resode


def field(t, y, params):
    W1, b1, W2, b2 = params
    return jnp.tanh(y @ W1 + b1) @ W2 + b2


def init(key, batch, width, hidden):
    k = jax.random.split(key, 4)
    params = (
        jax.random.normal(k[0], (width, hidden)) / np.sqrt(width),
        jnp.zeros(hidden),
        jax.random.normal(k[1], (hidden, width)) / np.sqrt(hidden),
        jnp.zeros(width),
    )
    y0 = jax.random.normal(k[2], (batch, width))
    target = jax.random.normal(k[3], (batch, width))
    return params, y0, target


# --- the contenders: each maps (params, y0) -> y1 -----------------------------------------------


def resode_solve(params, y0, num_steps):
    return resode.integrate(field, y0, 0.0, 1.0, num_steps, params, scheme="rk4")


def handwritten_solve(params, y0, num_steps):
    h = 1.0 / num_steps

    def rk4(y, k):
        t = k * h
        k1 = field(t, y, params)
        k2 = field(t + h / 2, y + (h / 2) * k1, params)
        k3 = field(t + h / 2, y + (h / 2) * k2, params)
        k4 = field(t + h, y + h * k3, params)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4), None

    y1, _ = jax.lax.scan(rk4, y0, jnp.arange(num_steps, dtype=y0.dtype))
    return y1


class _DiffraxRK4(dfx.AbstractERK):
    """Classic RK4 in diffrax (it ships no RK4): the same tableau as resode's."""

    tableau = dfx.ButcherTableau(
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),
        c=np.array([0.5, 0.5, 1.0]),
    )
    interpolation_cls = dfx.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 4


def diffrax_fixed(solver):
    def solve(params, y0, num_steps):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(field),
            solver,
            0.0,
            1.0,
            1.0 / num_steps,
            y0,
            params,
            stepsize_controller=dfx.ConstantStepSize(),
            saveat=dfx.SaveAt(t1=True),
            max_steps=num_steps,
        )
        return sol.ys[0]

    return solve


diffrax_solve = diffrax_fixed(_DiffraxRK4())

SOLVERS = {"hand-written scan": handwritten_solve, "resode": resode_solve, "diffrax": diffrax_solve}


def jax_programs(solve, num_steps, target):
    forward = jax.jit(lambda p, y0: solve(p, y0, num_steps))
    loss = lambda p, y0: jnp.mean((solve(p, y0, num_steps) - target) ** 2)
    backward = jax.jit(jax.value_and_grad(loss))
    return forward, backward


def torch_timings(params, y0, target, num_steps, repeats, method="rk4"):
    try:
        import torch
        from torchdiffeq import odeint
    except ImportError:
        return None
    W1, b1, W2, b2 = (torch.tensor(np.asarray(p), requires_grad=True) for p in params)
    y0_t = torch.tensor(np.asarray(y0))
    target_t = torch.tensor(np.asarray(target))
    ts = torch.tensor([0.0, 1.0])

    def f(t, y):
        return torch.tanh(y @ W1 + b1) @ W2 + b2

    opts = dict(method=method, options=dict(step_size=1.0 / num_steps))

    def forward():
        with torch.no_grad():
            return odeint(f, y0_t, ts, **opts)[-1]

    def backward():
        for p in (W1, b1, W2, b2):
            p.grad = None
        loss = torch.mean((odeint(f, y0_t, ts, **opts)[-1] - target_t) ** 2)
        loss.backward()
        return loss

    sync = lambda out: out
    return time_call(forward, repeats=repeats, sync=sync), time_call(
        backward, repeats=repeats, sync=sync
    )


def handwritten_euler(params, y0, num_steps):
    h = 1.0 / num_steps

    def euler(y, k):
        return y + h * field(k * h, y, params), None

    y1, _ = jax.lax.scan(euler, y0, jnp.arange(num_steps, dtype=y0.dtype))
    return y1


GRID_SOLVERS = {
    "euler": {
        "hand": handwritten_euler,
        "resode": lambda p, y, n: resode.integrate(field, y, 0.0, 1.0, n, p, scheme="euler"),
        "diffrax": diffrax_fixed(dfx.Euler()),
    },
    "rk4": {"hand": handwritten_solve, "resode": resode_solve, "diffrax": diffrax_solve},
}


def confirm(cases_timed, repeats) -> str:
    """Re-time the grid's worst resode / hand-written case with more repeats, and compare the
    two compiled programs' XLA cost analysis (FLOPs, bytes) and temporary memory."""
    (scheme, n, b, w), _, params, y0, target = max(cases_timed, key=lambda c: c[1])
    progs = {k: jax_programs(GRID_SOLVERS[scheme][k], n, target)[1] for k in ("resode", "hand")}
    costs = {}
    for k, g in progs.items():
        compiled = g.lower(params, y0).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        mem = compiled.memory_analysis()
        costs[k] = (cost.get("flops"), cost.get("bytes accessed"), mem.temp_size_in_bytes)
    t = time_interleaved(
        {k: (lambda g=g: g(params, y0)) for k, g in progs.items()}, repeats=repeats, warmup=2
    )
    same = "identical" if costs["resode"] == costs["hand"] else f"differ: {costs}"
    return (
        record(
            "rk",
            f"grid worst case ({scheme}, {n} steps, batch {b}, width {w}) re-timed, "
            f"{repeats} repeats: resode / hand-written",
            t["resode"].median_ms / t["hand"].median_ms,
            "<=",
            1.10,
        )
        + f" (XLA FLOPs, bytes accessed and temporary memory of the two programs: {same})"
    )


def grid(quick: bool) -> str:
    """Both schemes over steps x batch x width, forward and forward+backward, against every
    peer; the headline ratios are the worst case over the grid."""
    if quick:
        cases = [(s, 4, 8, 8) for s in ("euler", "rk4")]
        repeats = 3
    else:
        cases = [
            (s, n, b, w)
            for s in ("euler", "rk4")
            for n in (10, 20, 100)
            for b in (32, 256)
            for w in (64, 256)
        ]
        repeats = 9
    rows, worst = [], {"hand": [], "diffrax": [], "torch": []}
    cases_timed = []
    by_steps: dict[str, tuple[list, list]] = {}
    for scheme, n, b, w in cases:
        params, y0, target = init(jax.random.PRNGKey(0), b, w, w)
        fwd, both = {}, {}
        for name, solve in GRID_SOLVERS[scheme].items():
            f, g = jax_programs(solve, n, target)
            fwd[name] = lambda f=f, p=params, y=y0: f(p, y)
            both[name] = lambda g=g, p=params, y=y0: g(p, y)
        tf = time_interleaved(fwd, repeats=repeats, warmup=2)
        tb = time_interleaved(both, repeats=repeats, warmup=2)
        med = lambda t, k: t[k].median_ms
        torch_t = torch_timings(params, y0, target, n, repeats, method=scheme)
        r_hand = (med(tf, "resode") / med(tf, "hand"), med(tb, "resode") / med(tb, "hand"))
        r_dfx = (med(tf, "diffrax") / med(tf, "resode"), med(tb, "diffrax") / med(tb, "resode"))
        worst["hand"].append(r_hand[1])
        if (b, w) == (256, 64):
            for who, t in [("resode", tb), ("hand-written scan", tb), ("diffrax", tb)]:
                key = "hand" if who == "hand-written scan" else who
                xs, ys = by_steps.setdefault(f"{scheme}: {who}", ([], []))
                xs.append(n)
                ys.append(med(t, key))
        worst["diffrax"].append(r_dfx[1])
        # f+b FLOPs: each evaluation is two (b x w) @ (w x w) matmuls forward (4 b w^2) and
        # about twice that backward.
        evals = n * (1 if scheme == "euler" else 4)
        gflops = 12 * b * w * w * evals / (med(tb, "resode") * 1e-3) / 1e9
        cases_timed.append(((scheme, n, b, w), r_hand[1], params, y0, target))
        row = [scheme, n, b, w, f"{med(tf, 'resode'):.3f}", f"{med(tb, 'resode'):.3f}"]
        row.append(f"{gflops:.0f}")
        row += [f"{r_hand[0]:.2f}", f"{r_hand[1]:.2f}", f"{r_dfx[0]:.2f}", f"{r_dfx[1]:.2f}"]
        if torch_t is not None:
            r_t = (
                torch_t[0].median_ms / med(tf, "resode"),
                torch_t[1].median_ms / med(tb, "resode"),
            )
            worst["torch"].append(r_t[1])
            if (b, w) == (256, 64):
                xs, ys = by_steps.setdefault(f"{scheme}: torchdiffeq", ([], []))
                xs.append(n)
                ys.append(torch_t[1].median_ms)
            row += [f"{r_t[0]:.2f}", f"{r_t[1]:.2f}"]
        else:
            row += ["-", "-"]
        rows.append(row)
    if not quick:
        save_plot(
            Path(__file__).parent / "time_vs_steps.png",
            by_steps,
            xlabel="steps",
            ylabel="forward+backward time (ms)",
            title="batch 256, width 64, float32, CPU",
        )
    header = [
        "scheme",
        "steps",
        "batch",
        "width",
        "resode fwd ms",
        "resode f+b ms",
        "resode f+b GFLOP/s",
        "resode/hand fwd",
        "resode/hand f+b",
        "diffrax/resode fwd",
        "diffrax/resode f+b",
        "torchdiffeq/resode fwd",
        "torchdiffeq/resode f+b",
    ]
    out = [
        f"Grid: field width -> width -> width (tanh), float32, median of {repeats} interleaved "
        "calls per contender (ms for resode; the rest are ratios).",
        "",
        markdown_table(header, rows),
        "",
        "Worst case over the grid (forward+backward):",
        record("rk", "grid: max resode / hand-written scan", max(worst["hand"]), "<=", 1.10),
        record("rk", "grid: median resode / hand-written scan", statistics.median(worst["hand"])),
        confirm(cases_timed, 3 if quick else 25),
        record("rk", "grid: min diffrax / resode", min(worst["diffrax"]), ">=", 1.5),
    ]
    if worst["torch"]:
        out.append(record("rk", "grid: min torchdiffeq / resode", min(worst["torch"]), ">=", 1.0))
    return "\n".join(out)


def main(quick: bool = False) -> str:
    batch, width, hidden, num_steps = (16, 8, 16, 5) if quick else (256, 64, 128, 20)
    repeats = 5 if quick else 50
    params, y0, target = init(jax.random.PRNGKey(0), batch, width, hidden)

    rows, fwd_fns, bwd_fns = [], {}, {}
    for name, solve in SOLVERS.items():
        fwd, bwd = jax_programs(solve, num_steps, target)
        fwd_fns[name] = lambda fwd=fwd: fwd(params, y0)
        bwd_fns[name] = lambda bwd=bwd: bwd(params, y0)
    fwd_t = time_interleaved(fwd_fns, repeats=repeats)
    bwd_t = time_interleaved(bwd_fns, repeats=repeats)
    times = {name: (fwd_t[name], bwd_t[name]) for name in SOLVERS}
    torch_t = torch_timings(params, y0, target, num_steps, repeats)
    if torch_t is not None:
        times["torchdiffeq (rk4, torch CPU)"] = torch_t

    # Check that the JAX contenders compute the same thing before comparing their speed.
    ref = jax.jit(lambda p, y: handwritten_solve(p, y, num_steps))(params, y0)
    for name in ("resode", "diffrax"):
        got = jax.jit(functools.partial(SOLVERS[name], num_steps=num_steps))(params, y0)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=name)

    base_f, base_b = times["resode"]
    for name, (tf, tb) in times.items():
        rows.append(
            [
                name,
                f"{tf.median_ms:.3f} [{tf.min_ms:.3f}, {tf.max_ms:.3f}]",
                f"{tb.median_ms:.3f} [{tb.min_ms:.3f}, {tb.max_ms:.3f}]",
                f"{tf.median_ms / base_f.median_ms:.2f}",
                f"{tb.median_ms / base_b.median_ms:.2f}",
            ]
        )
    out = [
        f"Machine: {machine_summary()}",
        "",
        f"RK4, {num_steps} steps, batch {batch}, field {width} -> {hidden} -> {width} (tanh), "
        "float32. Median [min, max] ms; ratio = contender / resode (above 1: resode is faster).",
        "",
        markdown_table(
            ["contender", "forward ms", "fwd+bwd ms", "fwd ratio", "fwd+bwd ratio"], rows
        ),
    ]

    # Compile time against the number of steps (scan: should not grow).
    compile_rows = []
    for name in ("resode", "hand-written scan"):
        secs = {}
        for n in (10, 1000):
            _, bwd = jax_programs(SOLVERS[name], n, target)
            secs[n] = compile_seconds(bwd, params, y0)
        compile_rows.append(
            [name, f"{secs[10]:.2f}", f"{secs[1000]:.2f}", f"{secs[1000] / secs[10]:.2f}"]
        )
    out += [
        "",
        "Compile time of forward+backward (s):",
        "",
        markdown_table(["program", "10 steps", "1000 steps", "ratio 1000/10"], compile_rows),
    ]

    hw_b = times["hand-written scan"][1].median_ms
    dfx_b = times["diffrax"][1].median_ms
    resode_c = float(compile_rows[0][3])
    out += [
        "",
        "Targets (forward+backward):",
        record("rk", "RK4: resode / hand-written scan", base_b.median_ms / hw_b, "<=", 1.10),
        record("rk", "RK4: diffrax / resode", dfx_b / base_b.median_ms, ">=", 1.5),
        record("rk", "RK4: compile time 1000 / 10 steps", resode_c, "<=", 1.5),
    ]
    if torch_t is not None:
        out.append(
            record(
                "rk",
                "RK4: torchdiffeq / resode",
                torch_t[1].median_ms / base_b.median_ms,
                ">=",
                1.0,
            )
        )
    out += ["", grid(quick)]
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    print(main(quick=parser.parse_args().quick))
