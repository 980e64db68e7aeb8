"""resode.nn layers: compile time against depth, training-step speed, memory against depth.

Run:   .venv/bin/python benchmarks/bench_layers.py [--quick]
Takes: about two minutes on 2 CPU cores.
Shows: (1) compile time of a training step of an untied Euler ResidualStack at depth 1 and 64
       (target: ratio <= 1.5), next to a Python-unrolled ResNet whose compile time grows with
       depth; (2) a training step (loss, gradients, adam update) of a tied RK4 stack against the
       same computation written by hand in JAX (target: ratio <= 1.15); (3) temporary memory of
       the training step against depth for untied stacks with and without per-step
       checkpointing, reversible (momentum, reversible Heun), tied RK4, backward-Euler stacks and
       a DEQ (target: a reversible stack's memory at depth 256 within 1.2x of depth 8); (4) a
       training step of a tied Euler stack of a 1-D convolutional field (MNIST-1D sizes) with
       ConvField's matmul convolution (the CPU default) against XLA's convolution, both inside
       the stack's scan, and
       against a hand-written Python-unrolled loop of XLA convolutions (target on CPU: matmul in
       the scan within 2x of the unrolled loop).
"""

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from _harness import (
    compile_seconds,
    machine_summary,
    markdown_table,
    record,
    save_plot,
    temp_bytes,
    time_call,
    time_interleaved,
)

import resode.nn as rn

WIDTH, HIDDEN = 64, 128


def make_field(key):
    return rn.MLPField(WIDTH, HIDDEN, key=key)


def data(batch):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return jax.random.normal(k1, (batch, WIDTH)), jax.random.normal(k2, (batch, WIDTH))


def train_step_fn(forward):
    """One jitted training step: MSE loss of `forward(params, x)`, gradients, adam update."""
    opt = optax.adam(1e-3)

    @eqx.filter_jit
    def step(params, opt_state, x, target):
        loss, grads = eqx.filter_value_and_grad(lambda p: jnp.mean((forward(p, x) - target) ** 2))(
            params
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state, loss

    return step, opt


def stack_forward(stack, x):
    return jax.vmap(lambda v: stack(v)[0])(x)


def unrolled_resnet(depth):
    """A ResNet written as a Python loop over blocks (what scan-over-layers avoids)."""

    def forward(fields, x):
        h = 1.0 / depth
        for k in range(depth):
            block = jax.tree_util.tree_map(lambda a, k=k: a[k] if eqx.is_array(a) else a, fields)
            x = x + h * jax.vmap(lambda v, b=block: b(0.0, v))(x)
        return x

    return forward


def handwritten_rk4(num_steps):
    def forward(params, x):
        W1, b1, W2, b2 = params
        f = lambda y: jnp.tanh(y @ W1 + b1) @ W2 + b2
        h = 1.0 / num_steps

        def rk4(y, _):
            k1 = f(y)
            k2 = f(y + (h / 2) * k1)
            k3 = f(y + (h / 2) * k2)
            k4 = f(y + h * k3)
            return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4), None

        return jax.lax.scan(rk4, x, None, length=num_steps)[0]

    return forward


def main(quick: bool = False) -> str:
    batch = 16 if quick else 256
    depths = (1, 2) if quick else (1, 2, 16, 64, 256)
    repeats = 5 if quick else 60
    x, target = data(batch)
    key = jax.random.PRNGKey(0)
    out = [f"Machine: {machine_summary()}", ""]

    # (1) Compile time against depth.
    rows = []
    for depth in depths:
        stack = rn.ResidualStack(make_field, depth, scheme="euler", key=key)
        step, opt = train_step_fn(stack_forward)
        params = eqx.filter(stack, eqx.is_inexact_array)
        scan_s = compile_seconds(step, stack, opt.init(params), x, target)
        if depth <= 64:  # the unrolled program takes minutes to compile beyond that
            fields = stack.field
            step_u, opt_u = train_step_fn(unrolled_resnet(depth))
            opt_state = opt_u.init(eqx.filter(fields, eqx.is_inexact_array))
            unrolled = f"{compile_seconds(step_u, fields, opt_state, x, target):.2f}"
        else:
            unrolled = "not run"
        rows.append([depth, f"{scan_s:.2f}", unrolled])
    secs = {row[0]: float(row[1]) for row in rows}
    deep = 2 if quick else 64
    out += [
        f"Compile time (s) of one training step, untied Euler stack, "
        f"MLP {WIDTH}->{HIDDEN}->{WIDTH}, batch {batch}:",
        "",
        markdown_table(["depth", "ResidualStack (scan)", "Python-unrolled ResNet"], rows),
        "",
        record("layers", f"compile time depth {deep} / depth 1", secs[deep] / secs[1], "<=", 1.5)
        + " (depth 1 is a one-trip loop, which XLA removes)",
        record("layers", f"compile time depth {depths[-1]} / depth 2", secs[depths[-1]] / secs[2]),
        "",
    ]

    # (2) Training step of a tied RK4 stack against a hand-written one.
    num_steps = 20 if not quick else 4
    stack = rn.ResidualStack(make_field, num_steps, scheme="rk4", tied=True, key=key)
    step, opt = train_step_fn(stack_forward)
    f = stack.field
    hand_params = (f.layers[0].weight.T, f.layers[0].bias, f.layers[1].weight.T, f.layers[1].bias)
    step_h, opt_h = train_step_fn(handwritten_rk4(num_steps))
    np_loss = lambda y: float(jnp.mean((y - target) ** 2))
    assert (
        abs(np_loss(stack_forward(stack, x)) - np_loss(handwritten_rk4(num_steps)(hand_params, x)))
        < 1e-4
    )
    state = {
        "resode": (stack, opt.init(eqx.filter(stack, eqx.is_inexact_array))),
        "hand": (hand_params, opt_h.init(hand_params)),
    }
    timings = time_interleaved(
        {
            "resode ResidualStack (tied rk4)": lambda: step(*state["resode"], x, target),
            "hand-written JAX (scan rk4 + optax)": lambda: step_h(*state["hand"], x, target),
        },
        repeats=repeats,
    )
    r = (
        timings["resode ResidualStack (tied rk4)"].median_ms
        / timings["hand-written JAX (scan rk4 + optax)"].median_ms
    )
    out += [
        f"Training step (loss, grad, adam), tied RK4, {num_steps} steps, batch {batch}, "
        "float32; median [min, max] ms:",
        "",
        markdown_table(
            ["program", "step ms"],
            [
                [n, f"{t.median_ms:.3f} [{t.min_ms:.3f}, {t.max_ms:.3f}]"]
                for n, t in timings.items()
            ],
        ),
        "",
        record("layers", "tied RK4 training step: resode / hand-written", r, "<=", 1.15),
        "",
    ]

    # (3) Memory of the training step against depth.
    bodies = {
        "untied euler": lambda d: rn.ResidualStack(make_field, d, key=key),
        "untied euler, checkpointed": lambda d: rn.ResidualStack(
            make_field, d, checkpoint=True, key=key
        ),
        "untied momentum (reversible, gamma 0.9)": lambda d: rn.ResidualStack(
            make_field, d, reversible="momentum", key=key
        ),
        "untied reversible heun": lambda d: rn.ResidualStack(
            make_field, d, reversible="reversible_heun", key=key
        ),
        "tied rk4": lambda d: rn.ResidualStack(make_field, d, scheme="rk4", tied=True, key=key),
        "untied backward euler": lambda d: rn.ResidualStack(
            make_field, d, scheme="backward_euler", key=key
        ),
    }
    mem_depths = (2, 4) if quick else (4, 16, 64)
    rows, series = [], {}
    time_repeats = 2 if quick else 10
    for name, build in bodies.items():
        sizes, times = [], []
        for d in mem_depths:
            body = build(d)
            step, opt = train_step_fn(stack_forward)
            opt_state = opt.init(eqx.filter(body, eqx.is_inexact_array))
            sizes.append(temp_bytes(step, body, opt_state, x, target))
            t = time_call(
                lambda s=step, b=body, o=opt_state: s(b, o, x, target), repeats=time_repeats
            )
            times.append(t.median_ms)
        rows.append(
            [name] + [f"{s / 2**20:.1f} / {t:.1f}" for s, t in zip(sizes, times, strict=True)]
        )
        series[name] = (list(mem_depths), [s / 2**20 for s in sizes])
    deq = rn.DEQ(make_field(key), solver="picard")
    step, opt = train_step_fn(lambda m, x: jax.vmap(lambda v: m(v)[0])(x))
    opt_state = opt.init(eqx.filter(deq, eqx.is_inexact_array))
    deq_mem = temp_bytes(step, deq, opt_state, x, target)
    deq_ms = time_call(lambda: step(deq, opt_state, x, target), repeats=time_repeats).median_ms
    rows.append(
        ["DEQ (picard, implicit adjoint; depth-free)"]
        + [f"{deq_mem / 2**20:.1f} / {deq_ms:.1f}"] * len(mem_depths)
    )
    series["DEQ (depth-free)"] = (list(mem_depths), [deq_mem / 2**20] * len(mem_depths))
    if not quick:
        save_plot(
            Path(__file__).parent / "memory_vs_depth.png",
            series,
            xlabel="depth (steps)",
            ylabel="temporary memory of a training step (MiB)",
            title=f"MLP {WIDTH}->{HIDDEN}->{WIDTH}, batch {batch}, float32 (XLA memory analysis)",
        )
    out += [
        f"Temporary memory (MiB) / median time (ms) of the training step against depth "
        f"(batch {batch}):",
        "",
        markdown_table(["body"] + [f"depth {d}" for d in mem_depths], rows),
        "",
    ]
    # Reversible stacks: memory flat in depth (compiled only, not run).
    lo, hi = (4, 16) if quick else (8, 256)
    flat = {}
    for name in ("untied euler", "untied momentum (reversible, gamma 0.9)"):
        sizes = []
        for d in (lo, hi):
            body = bodies[name](d)
            step, opt = train_step_fn(stack_forward)
            opt_state = opt.init(eqx.filter(body, eqx.is_inexact_array))
            sizes.append(temp_bytes(step, body, opt_state, x, target))
        flat[name] = sizes
        label = f"{name}: training-step memory depth {hi} / depth {lo}"
        if "reversible" in name:
            out.append(record("layers", label, sizes[1] / sizes[0], "<=", 1.2))
        else:
            out.append(record("layers", label, sizes[1] / sizes[0]))
    out.append("")
    out += conv_in_loop(quick, repeats)
    return "\n".join(out)


def conv_in_loop(quick: bool, repeats: int) -> list[str]:
    """(4) A conv field inside a stack's scan: ConvField's matmul convolution against XLA's."""
    channels, hidden, length, steps = 16, (16 if quick else 128), 40, (2 if quick else 8)
    batch = 16 if quick else 128
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
    x = jax.random.normal(k1, (batch, channels, length))
    target = jax.random.normal(k2, (batch, channels, length))
    states = {}
    for impl in ("matmul", "lax"):
        stack = rn.ResidualStack(
            lambda k, impl=impl: rn.ConvField(
                channels, hidden, num_spatial_dims=1, conv_impl=impl, key=k
            ),
            steps,
            tied=True,
            key=k3,
        )
        step, opt = train_step_fn(stack_forward)
        states[impl] = (step, stack, opt.init(eqx.filter(stack, eqx.is_inexact_array)))

    field = states["lax"][1].field

    def unrolled(f, x):  # the same tied Euler stack, a Python loop of XLA convolutions
        for _ in range(steps):
            x = x + (1.0 / steps) * jax.vmap(lambda v: f.conv_out(jax.nn.relu(f.conv_in(v))))(x)
        return x

    step_u, opt_u = train_step_fn(unrolled)
    states["unrolled"] = (step_u, field, opt_u.init(eqx.filter(field, eqx.is_inexact_array)))
    ref = stack_forward(states["lax"][1], x)
    assert float(jnp.max(jnp.abs(stack_forward(states["matmul"][1], x) - ref))) < 1e-4
    assert float(jnp.max(jnp.abs(unrolled(field, x) - ref))) < 1e-4
    names = {
        "matmul": "ResidualStack, ConvField conv_impl='matmul' (scan)",
        "lax": "ResidualStack, ConvField conv_impl='lax' (scan)",
        "unrolled": "hand-written: Python-unrolled loop of lax convolutions",
    }
    timings = time_interleaved(
        {names[k]: (lambda s=s: s[0](s[1], s[2], x, target)) for k, s in states.items()},
        repeats=max(3, repeats // 6),
    )
    ms = {k: timings[names[k]].median_ms for k in names}
    return [
        f"Training step (loss, grad, adam) of a tied Euler stack, {steps} steps, ConvField 1-D "
        f"{channels}->{hidden}->{channels}, kernel 3, length {length}, batch {batch}; "
        "median [min, max] ms:",
        "",
        markdown_table(
            ["program", "step ms"],
            [
                [n, f"{t.median_ms:.2f} [{t.min_ms:.2f}, {t.max_ms:.2f}]"]
                for n, t in timings.items()
            ],
        ),
        "",
        record(
            "layers", "conv stack step: lax conv in scan / matmul in scan", ms["lax"] / ms["matmul"]
        ),
        record(
            "layers",
            "conv stack step: matmul in scan / hand-written unrolled lax conv",
            ms["matmul"] / ms["unrolled"],
            "<=",
            2.0,
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    print(main(quick=parser.parse_args().quick))
