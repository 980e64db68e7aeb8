"""resode.train and `resode run`: the loop, resume, kills, sharding, outputs and the CLI."""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

from resode.cli import main
from resode.config import load_config, save_config
from resode.data import load
from resode.train import (
    Trainer,
    TrainingDiverged,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    train_run,
)
from resode.train._tensorboard import crc32c

SMALL = [
    "model.width=16",
    "data.batch_size=64",
    "train.steps=40",
    "train.steps_per_call=10",
    "train.checkpoint_every=20",
    "train.lr=0.01",
    "eval.every=20",
]


def _cfg(*overrides):
    return load_config(None, [*SMALL, *overrides])


def _final_params(run_dir):
    """The arrays of a run's final checkpoint file, read as raw bytes (a bitwise comparison)."""
    step = latest_checkpoint(run_dir)
    return (Path(run_dir) / "checkpoints" / f"step_{step:09d}.eqx").read_bytes()


# --- command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        (["model.depth=3"], "model.depth"),  # unknown key
        (["train.steps=many"], "train.steps"),  # wrong type
        (["model.body.scheme=rk5"], "model.body.scheme"),  # bad scheme
        (["train.steps=-1"], "train.steps"),  # invalid value
    ],
)
def test_config_errors_exit_2_with_one_line(overrides, culprit, tmp_path, capsys):
    code = main(["run", "configs/quickstart.yaml", *overrides, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and culprit in err
    assert not (tmp_path / "r").exists()  # nothing written for a config that never started


def test_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "resode.cli", "run", "configs/quickstart.yaml", "model.body.kind=x"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "model.body.kind" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_dependent_config_errors_name_the_key(tmp_path, capsys):
    for overrides, culprit in [
        (["data.batch_size=5000"], "data.batch_size"),
        (["model.stem=conv1d"], "model.stem"),  # digits are (1, 8, 8)
        (["data.name=van_der_pol"], "data.name"),  # a trajectory set
    ]:
        code = main(["run", "configs/quickstart.yaml", *overrides, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and culprit in err and len(err.strip().splitlines()) == 1


def test_rerun_with_a_different_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *SMALL, "--out", str(out), "--quiet"]) == 0
    code = main(["run", "configs/quickstart.yaml", *SMALL, "model.width=32", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "model.width" in err and "16" in err and "32" in err


def test_run_writes_config_metrics_summary_plots_and_tensorboard(tmp_path):
    out = tmp_path / "run"
    code = main(
        ["run", "configs/quickstart.yaml", *SMALL, "train.tensorboard=true", "--out", str(out)]
    )
    assert code == 0
    # The resolved config, with the overrides applied.
    saved = load_config(out / "config.yaml")
    assert saved.model.width == 16 and saved.train.steps == 40 and saved.data.name == "digits"
    summary = json.loads((out / "summary.json").read_text())
    required = ("test_accuracy", "test_loss", "num_params", "train_time_s", "steps", "step_time_ms")
    for key in required:
        assert summary[key] is not None, key
    assert summary["steps"] == 40 and summary["status"] == "finished"
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["num_fevals"] == 4
    assert summary["memory_bytes"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert [r["step"] for r in test] == [20, 40]
    for key in ("loss", "accuracy", "grad_norm", "num_fevals", "residual", "step_time_ms"):
        assert key in train[0], key
    assert test[-1]["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    for name in ("loss.png", "accuracy.png", "nfe.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list_checkpoints(out) == [20, 40]
    # TensorBoard reads the event file back.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 41))
    assert losses[0].value == pytest.approx(train[0]["loss"], rel=1e-6)
    assert acc.Scalars("test/test_accuracy")[-1].value == pytest.approx(
        summary["test_accuracy"], rel=1e-6
    )


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert struct.pack("<I", crc32c(b"")) == b"\x00\x00\x00\x00"


def test_finished_run_is_not_retrained(tmp_path):
    out = tmp_path / "run"
    first = train_run(_cfg(), out, quiet=True)
    mtime = (out / "summary.json").stat().st_mtime_ns
    again = train_run(_cfg(), out, quiet=True)
    assert again == first and (out / "summary.json").stat().st_mtime_ns == mtime


# --- the loop -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        ["model.body.kind=plain"],
        ["model.body.kind=residual", "model.body.tied=true", "model.body.scheme=rk4"],
        ["model.body.kind=residual", "model.body.drop_rate=0.2"],
        [
            "model.body.kind=residual",
            "model.body.reversible=momentum",
            "model.body.learn_gamma=true",
        ],
        ["model.body.kind=residual", "model.body.reversible=reversible_heun"],
        # (Implicit and ODE bodies also train in test_models' every-body-kind test; these two
        # compile for ~15 s each: `make test-slow`.)
        pytest.param(
            ["model.body.kind=implicit", "model.body.scheme=trapezoid", "model.body.num_steps=2"],
            marks=pytest.mark.slow,
        ),
        ["model.body.kind=deq", "model.body.adjoint=phantom"],
        pytest.param(
            ["model.body.kind=ode", "model.body.rtol=1e-2", "model.body.atol=1e-3"],
            marks=pytest.mark.slow,
        ),
        ["model.body.kind=none"],
    ],
    ids=lambda o: "-".join(x.split("=")[1] for x in o[:2]),
)
def test_short_training_lowers_the_loss(body):
    cfg = _cfg(*body, "train.steps=30", "train.lr=0.03", "train.schedule=constant")
    trainer = Trainer(cfg, load("digits"))
    state = trainer.init_state()
    before = trainer.evaluate(state.params)["test_loss"]
    state, metrics = trainer.train(state, 30)
    after = trainer.evaluate(state.params)["test_loss"]
    assert np.all(np.isfinite(metrics["loss"]))
    # A plain stack (no skip connections) is the slowest: its loss falls to 0.83x here.
    assert np.mean(metrics["loss"][-5:]) < 0.9 * np.mean(metrics["loss"][:5])
    assert after < 0.9 * before
    assert int(state.step) == 30


def test_regression_sets_train_with_a_squared_error():
    cfg = _cfg("data.name=crossing1d", "data.batch_size=32")
    trainer = Trainer(cfg, load("crossing1d"))
    state = trainer.init_state()
    state, metrics = trainer.train(state, 40)
    ev = trainer.evaluate(state.params)
    assert "accuracy" not in metrics and ev["test_accuracy"] is None
    assert metrics["loss"][-1] < 0.1 * metrics["loss"][0]


def test_second_training_call_does_not_recompile():
    trainer = Trainer(_cfg(), load("digits"))
    state = trainer.init_state()
    state, _ = trainer.train(state, 10)
    compiles = []

    def listener(event, duration, **kwargs):
        if "compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        state, _ = trainer.train(state, 10)
        state, _ = trainer.train(state, 10)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    assert int(state.step) == 30


def test_optimizers_and_schedules():
    from resode.train import make_optimizer

    for overrides in (
        ["train.optimizer=sgd", "train.momentum=0.9", "train.schedule=constant"],
        ["train.optimizer=adamw", "train.weight_decay=0.1", "train.warmup_steps=5"],
        ["train.schedule=constant", "train.warmup_steps=5", "train.grad_clip=null"],
    ):
        cfg = _cfg(*overrides)
        trainer = Trainer(cfg, load("digits"))
        state, metrics = trainer.train(trainer.init_state(), 30)
        assert metrics["loss"][-1] < metrics["loss"][0], overrides
    # Warm-up: the first update of a warm-up schedule is zero.
    cfg = _cfg("train.warmup_steps=10", "train.schedule=constant", "train.grad_clip=null")
    opt = make_optimizer(cfg)
    params = {"w": np.ones(3, np.float32)}
    updates, _ = opt.update({"w": np.ones(3, np.float32)}, opt.init(params), params)
    assert np.all(np.asarray(updates["w"]) == 0)


def test_gradient_clipping_bounds_the_update():
    from resode.train import make_optimizer

    cfg = _cfg("train.optimizer=sgd", "train.momentum=0", "train.grad_clip=0.5", "train.lr=1")
    cfg.train.schedule = "constant"
    opt = make_optimizer(cfg)
    params = {"w": np.zeros(4, np.float32)}
    updates, _ = opt.update({"w": np.full(4, 10.0, np.float32)}, opt.init(params), params)
    assert np.linalg.norm(np.asarray(updates["w"])) == pytest.approx(0.5, rel=1e-6)


# --- checkpoints, resume, kills, divergence ------------------------------------------------


def test_resume_equals_uninterrupted_bit_for_bit(tmp_path):
    cfg = _cfg("model.body.drop_rate=0.1")  # uses the dropout key too
    train_run(cfg, tmp_path / "whole", quiet=True)
    # Stop at step 30 (after the checkpoint of step 20): the resumed run redoes steps 21-30.
    partial = train_run(cfg, tmp_path / "split", quiet=True, stop_after=30)
    assert partial["status"] == "stopped" and latest_checkpoint(tmp_path / "split") == 20
    resumed = train_run(cfg, tmp_path / "split", quiet=True)
    assert resumed["resumed_from"] == 20
    assert _final_params(tmp_path / "split") == _final_params(tmp_path / "whole")
    rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(r)["step"] for r in rows if '"train"' in r]
    assert steps == list(range(1, 41))  # the lines of the redone steps are not duplicated


@pytest.mark.slow  # ~20-55 s (subprocesses / full runs); `make test-slow`
def test_kill_loses_only_steps_since_the_last_checkpoint(tmp_path):
    """SIGKILL a real `resode run` between checkpoints; the checkpoint survives and resuming
    ends exactly where an uninterrupted run ends."""
    repo = Path(__file__).parents[1]
    overrides = [
        "model.width=16",
        "data.batch_size=64",
        "train.steps=3000",
        "train.steps_per_call=5",
        "train.checkpoint_every=100",
        "eval.every=1000",
    ]
    cmd = [sys.executable, "-m", "resode.cli", "run", "configs/quickstart.yaml", *overrides]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed), "--quiet"], cwd=repo)
    deadline = time.time() + 120
    while len(list_checkpoints(killed)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = latest_checkpoint(killed)
    assert kept is not None and kept < 3000, "the run finished before it could be killed"
    # The newest checkpoint loads, and no temporary file is taken for a checkpoint.
    cfg = load_config(repo / "configs/quickstart.yaml", overrides)
    with jax.enable_x64(False):  # the run trained in float32
        like = jax.device_get(Trainer(cfg, load("digits")).init_state())
    tree, meta = load_checkpoint(killed, like)
    assert int(tree.step) == kept == meta["step"]
    assert not (killed / "summary.json").exists()
    # Resume, then compare with an uninterrupted run.
    assert subprocess.run([*cmd, "--out", str(killed), "--quiet"], cwd=repo).returncode == 0
    whole = tmp_path / "whole"
    assert subprocess.run([*cmd, "--out", str(whole), "--quiet"], cwd=repo).returncode == 0
    assert json.loads((killed / "summary.json").read_text())["resumed_from"] == kept
    assert _final_params(killed) == _final_params(whole)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "run",
        "configs/quickstart.yaml",
        *SMALL,
        "train.optimizer=sgd",
        "train.grad_clip=null",
        "train.schedule=constant",
        "train.checkpoint_every=10",
        "train.lr=1e-3",
        "--out",
        str(out),
        "--quiet",
    ]
    cfg = load_config("configs/quickstart.yaml", [*args[2:-3]])
    train_run(cfg, out, quiet=True, stop_after=10)
    assert latest_checkpoint(out) == 10
    good = _final_params(out)
    # Resume with an enormous learning rate (the saved config is edited to allow it).
    cfg.train.lr = 1e30
    save_config(cfg, out / "config.yaml")
    with pytest.raises(TrainingDiverged, match=r"step 1[1-9].*checkpoint of step 10 is kept"):
        train_run(cfg, out, quiet=True)
    assert latest_checkpoint(out) == 10 and _final_params(out) == good
    assert not (out / "summary.json").exists()
    # Through the command line: exit status 1 and one message.
    capsys.readouterr()
    code = main(
        ["run", "configs/quickstart.yaml", *args[2:-3], "train.lr=1e30", "--out", str(out / "b")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "loss is" in err and "no checkpoint had been written" in err


# --- data parallelism -----------------------------------------------------------------------


@pytest.mark.slow  # ~20-55 s (subprocesses / full runs); `make test-slow`
def test_two_host_devices_give_the_same_loss_as_one():
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from resode.config import load_config
        from resode.data import load
        from resode.train import Trainer
        assert len(jax.devices()) == 2
        cfg = load_config(None, SMALL)
        data = load("digits")
        out = {}
        for n in (1, 2):
            trainer = Trainer(cfg, data, devices=jax.devices()[:n])
            state, m = trainer.train(trainer.init_state(), 20)
            out[n] = (m["loss"], trainer.evaluate(state.params)["test_loss"])
            if n == 2:
                hlo = trainer.compiled(trainer.init_state(), 20).as_text()
                assert "all-reduce" in hlo, "the gradient is not reduced across devices"
                sharding = state.params.head.weight.sharding
                assert sharding.is_fully_replicated and len(sharding.device_set) == 2
        np.testing.assert_allclose(out[1][0], out[2][0], rtol=2e-5)
        np.testing.assert_allclose(out[1][1], out[2][1], rtol=2e-5)
        print("ok", out[1][0][-1], out[2][0][-1])
        """
    ).replace("SMALL", repr(SMALL))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_processes(cmd, out, repo, env):
    coordinator = f"127.0.0.1:{_free_port()}"
    return [
        subprocess.Popen(
            [
                *cmd,
                "--out",
                str(out),
                "--quiet",
                "--distributed",
                "--coordinator",
                coordinator,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


@pytest.mark.slow  # ~40-60 s (two pairs of processes); `make test-slow`
def test_two_processes_train_checkpoint_resume_and_match_one_process(tmp_path):
    """Two `resode run --distributed` processes (one CPU device each, gloo collectives, a
    coordinator on a loopback port) train the same global batch as one process: killed after a
    checkpoint and resumed, they end where a single-process run ends, to rounding; only process
    0 writes the run directory."""
    repo = Path(__file__).parents[1]
    overrides = [
        "model.width=16",
        "data.batch_size=64",
        "train.steps=120",
        "train.steps_per_call=5",
        "train.checkpoint_every=20",
        "eval.every=60",
    ]
    cmd = [sys.executable, "-m", "resode.cli", "run", "configs/quickstart.yaml", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["JAX_PLATFORMS"] = "cpu"
    two = tmp_path / "two"
    procs = _launch_two_processes(cmd, two, repo, env)
    deadline = time.time() + 180
    while (
        len(list_checkpoints(two)) < 2
        and time.time() < deadline
        and all(p.poll() is None for p in procs)
    ):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    logs = [p.communicate()[0] for p in procs]
    kept = latest_checkpoint(two)
    assert kept is not None and kept >= 40, logs
    assert not (two / "summary.json").exists(), "the run finished before it could be killed"
    # Resume on a fresh coordinator; the pair finishes.
    procs = _launch_two_processes(cmd, two, repo, env)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    one = tmp_path / "one"
    cfg = load_config(repo / "configs/quickstart.yaml", overrides)
    with jax.enable_x64(False):  # the processes train in float32
        s1 = train_run(cfg, one, quiet=True, devices=jax.devices()[:1])
        like = jax.device_get(Trainer(cfg, load("digits")).init_state())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["num_devices"] == 2 and s1["num_devices"] == 1
    assert s2["resumed_from"] == kept and s1["resumed_from"] is None
    # Only process 0 writes: one metrics line per step and evaluation, no stray files.
    rows2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    rows1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows2] == [(r["step"], r["split"]) for r in rows1]
    assert sorted(p.name for p in two.rglob("*") if "tmp" in p.name) == []
    # The same training, to rounding (the gradient mean is reduced in another order).
    np.testing.assert_allclose(
        [r["loss"] for r in rows2 if r["split"] == "train"],
        [r["loss"] for r in rows1 if r["split"] == "train"],
        rtol=1e-4,
    )
    np.testing.assert_allclose(s2["test_loss"], s1["test_loss"], rtol=1e-4)
    p2, _ = load_checkpoint(two, like)
    p1, _ = load_checkpoint(one, like)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(p2.params), leaves(p1.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # ~20-30 s (two processes); `make test-slow`
def test_sweep_point_over_two_processes(tmp_path):
    """`resode sweep --index I --distributed`: one point trained by two processes; process 0
    alone writes the manifest, the point's files and its metrics."""
    repo = Path(__file__).parents[1]
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "data: {name: digits, batch_size: 64}\n"
        "model: {width: 16, body: {kind: residual, num_steps: 2}}\n"
        "train: {steps: 20, steps_per_call: 10, checkpoint_every: 10}\n"
        "eval: {every: 10}\n"
        "sweep: {model.body.num_steps: [1, 2]}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "resode.cli", "sweep", str(config), "--index", "1"]
    out = tmp_path / "sweep"
    procs = _launch_two_processes(cmd, out, repo, env)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    point = out / "num_steps=2"
    summary = json.loads((point / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["num_devices"] == 2
    assert json.loads((point / "point.json").read_text()) == {"model.body.num_steps": 2}
    rows = (point / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 20 + 2  # 20 training steps and 2 evaluations, written once
    assert (out / "sweep.json").exists() and not (out / "num_steps=1").exists()


def test_distributed_sweep_needs_an_index(tmp_path, capsys):
    config = Path(__file__).parents[1] / "configs" / "depth_comparison_quick.yaml"
    code = main(["sweep", str(config), "--out", str(tmp_path / "s"), "--distributed"])
    err = capsys.readouterr().err
    assert code == 2 and "--distributed" in err and "--index" in err
    assert not (tmp_path / "s").exists()


def test_state_is_an_equinox_pytree_of_arrays():
    trainer = Trainer(_cfg(), load("digits"))
    leaves = jax.tree_util.tree_leaves(trainer.init_state())
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert eqx.is_array(trainer.init_state().step)


@pytest.mark.parametrize("scheme", ["backward_euler", "trapezoid", "gauss_legendre4"])
def test_implicit_stack_backward_vjps_match_a_direct_count(scheme):
    """measure_body's backward VJPs of an implicit stack equal the field VJPs counted by a
    custom_vjp whose backward rule reports each call."""
    import equinox as eqx
    import jax.numpy as jnp

    import resode.nn as rn
    from resode.nn._models import Classifier, Stem
    from resode.train._measure import measure_body

    calls = []

    @jax.custom_vjp
    def counted(W, y):
        return jnp.tanh(W @ y)

    def fwd(W, y):
        return counted(W, y), (W, y)

    def bwd(res, g):
        jax.debug.callback(lambda: calls.append(1))
        _, vjp = jax.vjp(lambda W, y: jnp.tanh(W @ y), *res)
        return vjp(g)

    counted.defvjp(fwd, bwd)
    fn = lambda W, t, y, args: counted(W, y) - 0.5 * y
    key = jax.random.PRNGKey(0)
    stack = rn.ResidualStack(
        lambda k: rn.FunctionField(0.3 * jax.random.normal(k, (4, 4)), fn),
        3,
        scheme=scheme,
        root="picard",
        key=key,
    )
    model = Classifier(
        Stem("mlp", (4,), 4, key=key), stack, eqx.nn.Linear(4, 3, key=key), "implicit"
    )
    x = jax.random.normal(key, (1, 4))
    y = np.array([1])
    measured = measure_body(model, x, y, classification=True)["backward_vjps"]
    calls.clear()

    def loss(m):
        logits, _ = m(x[0], inference=True)
        return -jax.nn.log_softmax(logits)[1]

    jax.block_until_ready(eqx.filter_grad(loss)(model))
    jax.effects_barrier()
    assert len(calls) > 3
    # Gauss-Legendre evaluates its 2 coupled stages as one vmapped call, which the callback
    # sees once; resode counts stage evaluations (as its forward NFE does).
    per_call = 2 if scheme == "gauss_legendre4" else 1
    assert measured == per_call * len(calls)


def test_memory_of_the_longest_compiled_call_is_reported():
    trainer = Trainer(_cfg(), load("digits"))
    assert trainer.memory_bytes() is None  # nothing compiled yet
    state, _ = trainer.train(trainer.init_state(), 7)
    assert trainer.memory_bytes() == trainer.memory_bytes(7) > 0
    assert trainer.memory_bytes(3) is None
