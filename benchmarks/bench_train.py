"""Training throughput of `resode run`'s machinery against hand-written equinox + optax loops.

Run:   .venv/bin/python benchmarks/bench_train.py [--quick]
Takes: about a minute on 2 CPU cores.
Shows: steps per second on the quickstart model (configs/quickstart.yaml: digits, untied Euler
       ResNet of 4 blocks, width 128, batch 128, adam with warmup + cosine, clipping) for
       - resode's `Trainer.train` (what `resode run` calls: `steps_per_call` steps in one
         compiled `lax.scan`, donated state, metrics and diagnostics returned every step),
       - a minimal hand-written loop: one `jax.jit` step per Python iteration (donated),
       - a hand-written `lax.scan` over the same steps (no metrics),
       all over the same device-resident arrays and the same batch order, and resode with
       `train.precision=bfloat16` (bfloat16 compute, float32 parameters). Target: resode at
       least 0.95x the minimal hand-written loop; the bfloat16 ratio has none (it depends on
       whether the device has bfloat16 units).
"""

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from _harness import machine_summary, markdown_table, record, time_interleaved

from resode.config import load_config
from resode.data import batch_indices, load
from resode.train import Trainer

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def hand_written(model, cfg, x_all, y_all, data_key):
    """The equinox + optax loop a user would write: returns (init, step, scan_steps)."""
    t = cfg.train
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, t.warmup_steps, t.steps)
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adam(schedule))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    n, batch = x_all.shape[0], cfg.data.batch_size

    def loss_fn(p, x, y):
        logits, _ = jax.vmap(eqx.combine(p, static))(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def one(carry, _):
        p, o, i = carry
        idx = batch_indices(data_key, i, n, batch)
        loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
        updates, o = opt.update(grads, o, p)
        return (eqx.apply_updates(p, updates), o, i + 1), loss

    step = jax.jit(lambda carry: one(carry, None), donate_argnums=0)

    def scan_steps(carry, length):
        return jax.lax.scan(one, carry, None, length=length)

    scan = jax.jit(scan_steps, static_argnums=1, donate_argnums=0)
    return (params, opt.init(params), jnp.array(0, jnp.int32)), step, scan


def main(quick: bool = False) -> str:
    overrides = ["model.width=16"] if quick else []
    cfg = load_config(QUICKSTART, overrides)
    length = cfg.train.steps_per_call
    repeats = 3 if quick else 40
    trainer = Trainer(cfg, load(cfg.data.name, seed=cfg.data.seed))
    carry_r = [trainer.init_state()]
    trainer_bf16 = Trainer(
        load_config(QUICKSTART, [*overrides, "train.precision=bfloat16"]),
        load(cfg.data.name, seed=cfg.data.seed),
    )
    carry_b = [trainer_bf16.init_state()]
    init, step, scan = hand_written(
        trainer.model(trainer.params0), cfg, trainer.x_train, trainer.y_train, trainer._data_key
    )
    carry_h = [init]
    carry_s = [jax.tree_util.tree_map(jnp.copy, init)]

    def run_resode():
        carry_r[0], metrics = trainer.train(carry_r[0], length)
        return carry_r[0].step

    def run_bf16():
        carry_b[0], metrics = trainer_bf16.train(carry_b[0], length)
        return carry_b[0].step

    def run_loop():
        for _ in range(length):
            carry_h[0], loss = step(carry_h[0])
        return loss

    def run_scan():
        carry_s[0], losses = scan(carry_s[0], length)
        return losses

    times = time_interleaved(
        {"resode": run_resode, "bf16": run_bf16, "loop": run_loop, "scan": run_scan},
        repeats=repeats,
        warmup=2,
    )
    rate = {k: length / (v.median_ms / 1e3) for k, v in times.items()}
    rows = [
        [
            name,
            f"{times[key].median_ms / length * 1e3:.0f}",
            f"{rate[key]:.0f}",
            f"{rate['resode'] / rate[key]:.2f}",
        ]
        for name, key in [
            ("resode Trainer.train (resode run)", "resode"),
            ("hand-written: jit step per iteration", "loop"),
            ("hand-written: lax.scan of steps", "scan"),
            ("resode, train.precision=bfloat16", "bf16"),
        ]
    ]
    out = [
        f"Machine: {machine_summary()}",
        "",
        f"Training throughput, quickstart model (width {cfg.model.width}, "
        f"{cfg.model.body.num_steps} untied Euler blocks, batch {cfg.data.batch_size}), "
        f"{length} steps per call, median of {repeats}:",
        "",
        markdown_table(["loop", "us / step", "steps / s", "resode speed / this"], rows),
        "",
        record(
            "train",
            "steps/s: resode / minimal hand-written loop",
            rate["resode"] / rate["loop"],
            ">=",
            0.95,
        ),
        record("train", "steps/s: resode / hand-written lax.scan", rate["resode"] / rate["scan"]),
        record("train", "steps/s: bfloat16 / float32 (resode)", rate["bf16"] / rate["resode"]),
    ]
    report = "\n".join(out)
    print(report)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
