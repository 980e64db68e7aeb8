"""Smoke test: `resode bench --quick` runs every benchmark script end to end on tiny sizes and
prints the table of headline ratios (no timing assertions)."""

import pytest

from resode.cli import BENCH_TITLES, BENCHES, main


@pytest.mark.slow  # about 3-6 min on 2 cores: every benchmark script end to end
def test_resode_bench_quick_runs_every_benchmark_and_prints_the_ratio_table(capsys):
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    for name, script in BENCHES.items():
        assert f"## {name} ({script}.py)" in out
    table = out[out.index("## Headline ratios") :]
    for needle in (
        "RK4: resode / hand-written scan",
        "grid: min diffrax / resode",
        "diffrax Kvaerno5 / best resode",
        "optimistix / resode picard + implicit",
        "optimistix Newton root find / resode newton + implicit",
        "implicit backward memory",
        "DEQ layer (MLP 8, batch 8, vmapped): anderson / picard fwd+bwd",
        "tied RK4 training step: resode / hand-written",
        "ODEBlock / direct diffrax, fwd+bwd",
        "steps/s: resode / minimal hand-written loop",
    ):
        assert needle in table, needle
    # Every row has a value; rows with a target say whether it was met.
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 15
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        float(cells[2])
        assert cells[4] in ("yes", "NO", "-")


def test_resode_bench_only_names_the_unknown_benchmark(capsys):
    assert main(["bench", "--only", "rk,warp"]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "'warp'" in err and "rk, implicit" in err


@pytest.mark.slow  # ~15 s: a whole benchmark at --quick sizes
@pytest.mark.parametrize("name", ["train"])
def test_resode_bench_only_runs_the_named_one_and_writes_its_report(name, tmp_path, capsys):
    report = tmp_path / "sub" / "RESULTS.md"
    assert main(["bench", "--quick", "--only", name, "--write", str(report)]) == 0
    out = capsys.readouterr().out
    assert "## train (bench_train.py)" in out and "## rk (" not in out
    text = report.read_text()
    assert text.startswith("# Benchmark results (--quick")
    assert "`resode bench --quick --only train --write`" in text
    assert "Machine: " in text and "jax " in text
    # The headline table of the run, then the benchmark's own section with its tables.
    assert text.index("## Headline ratios") < text.index("## Training loop (`benchmarks/")
    assert "steps/s: resode / minimal hand-written loop" in text
    assert "## Fixed-step" not in text


def test_every_benchmark_has_a_report_heading():
    # `resode bench --write` heads each benchmark's section with its title.
    assert BENCH_TITLES.keys() == BENCHES.keys()


def _bench_fixed_point():
    """benchmarks/bench_fixed_point.py as a module (the benchmarks are scripts, not a package)."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    try:
        import bench_fixed_point
    finally:
        sys.path.pop(0)
    return bench_fixed_point


def test_the_history_traffic_references_take_the_picard_step_and_fill_their_histories():
    """The per-iteration table's floor rows claim to iterate like Picard while doing their
    method's history traffic: their iterates must be Picard's, and their histories written."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import resode

    bench = _bench_fixed_point()
    params, _ = bench.init(jax.random.key(3), 8, 6)
    z0 = jnp.zeros_like(params[2])
    picard = resode.fixed_point(
        bench.layer, z0, params, solver=resode.Picard(), tol=0.0, max_steps=7
    ).value
    for reference in (bench.AndersonTraffic(memory=3), bench.BroydenTraffic(memory=4)):
        value = resode.fixed_point(
            bench.layer, z0, params, solver=reference, tol=0.0, max_steps=7
        ).value
        np.testing.assert_allclose(value, picard, rtol=1e-6, atol=1e-7)
        # One update on a fresh state writes the first row of each history.
        fz = bench.layer(z0 + 0.1, params)
        _, state = reference.update(z0 + 0.1, fz, None, reference.init(z0, params), 0.0)
        assert float(jnp.abs(state[0][0]).sum()) > 0 and float(jnp.abs(state[1][0]).sum()) > 0


def test_the_forward_history_estimate_of_the_adjoint_is_the_one_its_secant_pairs_define():
    """The warm-start table's estimate -H^T zbar of the adjoint u = (I - J^T)^{-1} zbar: exact for
    Anderson on a linear map once its differences span the space (memory 5, dimension 4, five
    iterations; mixing 1 and 0.5), and for Broyden consistent with its newest secant pair
    (H dg = dx, so dg . (-H^T zbar) = -dx . zbar), in float64."""
    import jax.numpy as jnp
    import numpy as np

    import resode
    from resode.solvers import FixedPointSolution

    bench = _bench_fixed_point()
    rng = np.random.default_rng(5)
    dim = 4
    A = rng.normal(size=(dim, dim))
    A = jnp.asarray(0.6 * A / np.linalg.norm(A, 2))
    c, zbar = jnp.asarray(rng.normal(size=dim)), jnp.asarray(rng.normal(size=dim))
    fn = lambda z, _: A @ z + c
    exact = jnp.linalg.solve(jnp.eye(dim) - A.T, zbar)
    for anderson in (bench.AndersonWithHistory(), bench.AndersonWithHistory(mixing=0.5)):
        sol = resode.solvers.iterate(anderson, fn, jnp.zeros(dim), None, tol=0.0, max_steps=5)
        np.testing.assert_allclose(anderson.adjoint_estimate(sol, zbar), exact, rtol=1e-10)
        # With fewer pairs than dimensions the estimate is not the adjoint (the check can fail).
        short = resode.solvers.iterate(anderson, fn, jnp.zeros(dim), None, tol=0.0, max_steps=3)
        assert not np.allclose(anderson.adjoint_estimate(short, zbar), exact, rtol=1e-3)

    broyden = bench.BroydenWithHistory()
    z, state, previous = jnp.zeros(dim), broyden.init(jnp.zeros(dim), None), None
    for _ in range(3):
        fz = fn(z, None)
        if previous is not None:
            dx, dg = z - previous[0], (fz - z) - previous[1]
        previous = (z, fz - z)
        z, state = broyden.update(z, fz, None, state, 0.0)
    sol = FixedPointSolution(
        value=z, num_steps=3, residual=0.0, converged=True, stats=broyden.stats(state)
    )
    assert int(sol.stats["n"]) == 2  # two corrections stored: the estimate is not -I
    np.testing.assert_allclose(
        jnp.dot(dg, broyden.adjoint_estimate(sol, zbar)), -jnp.dot(dx, zbar), rtol=1e-10
    )
