"""Mixed precision: `train.precision=bfloat16` and how every solver behaves in a 16-bit state.

Training computes in bfloat16 with float32 parameters and optimiser state; solvers hold a 16-bit
state to a tolerance no tighter than its epsilon (`precision_floor`) and measure residuals in
float32, so the convergence they report can be checked by recomputing the residual here.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resode
import resode.nn as rn
from resode.config import load_config
from resode.data import load
from resode.nn import BODIES
from resode.solvers import default_tol, precision_floor
from resode.train import Trainer

BF16 = jnp.bfloat16
EPS_BF16 = float(jnp.finfo(BF16).eps)  # 2^-7


def _rel_residual(f, z, args):
    """||f(z) - z|| / ||f(z)|| computed here in float64 from the returned state."""
    z64 = np.asarray(z, np.float64)
    fz = np.asarray(f(z, args).astype(jnp.float32), np.float64)
    return np.linalg.norm(fz - z64) / np.linalg.norm(fz)


# --- the floor ----------------------------------------------------------------------------------


def test_precision_floor_and_default_tolerance():
    assert precision_floor(BF16) == EPS_BF16 == 2.0**-7
    assert precision_floor(jnp.float16) == 2.0**-10
    assert precision_floor(jnp.float32) == 0.0 and precision_floor(jnp.float64) == 0.0
    assert default_tol(BF16) == EPS_BF16  # not 100 eps (0.78), which would accept anything
    assert default_tol(jnp.float32) == pytest.approx(100 * 2.0**-23)


# --- solvers in bfloat16 ------------------------------------------------------------------------


def _contraction(n, scale, key):
    kw, kx = jax.random.split(key)
    w = scale * jax.random.normal(kw, (n, n)) / np.sqrt(n)
    x = jax.random.normal(kx, (n,))
    return w, x


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden", "newton"])
def test_fixed_point_in_bfloat16_converges_to_its_floor_and_says_so_honestly(solver):
    w, x = _contraction(32, 0.8, jax.random.PRNGKey(0))
    f = lambda z, a: jnp.tanh(a[0] @ z + a[1])
    args = (w.astype(BF16), x.astype(BF16))
    sol = resode.fixed_point(f, jnp.zeros(32, BF16), args, solver=solver, tol=1e-6)
    assert sol.value.dtype == BF16
    assert sol.residual.dtype == jnp.float32  # measured in float32, not in bfloat16
    # tol 1e-6 is below bfloat16's reach: the solve is held to the floor, and meets it.
    assert bool(sol.converged) and float(sol.residual) <= EPS_BF16
    # Recomputed here: also below the floor (near it, the residual is rounding noise, and XLA
    # rounds a bfloat16 product differently inside and outside a loop, so not to the digit).
    assert _rel_residual(f, sol.value, args) <= 1.25 * EPS_BF16
    # Against the float64 equilibrium: within bfloat16's resolution.
    ref = resode.fixed_point(
        f, jnp.zeros(32, jnp.float64), (w.astype(jnp.float64), x.astype(jnp.float64)), tol=1e-12
    ).value
    assert np.max(np.abs(np.asarray(sol.value, np.float64) - ref)) < 16 * EPS_BF16


def test_bfloat16_solve_that_cannot_converge_is_reported_not_converged():
    # An expansive map: z = 3 z - 1 has the fixed point 0.5 but Picard moves away from it.
    f = lambda z, a: 3.0 * z - 1.0
    sol = resode.fixed_point(f, jnp.full(8, 0.6, BF16), None, solver="picard", max_steps=20)
    assert not bool(sol.converged)
    assert np.isfinite(float(sol.residual)) and float(sol.residual) > EPS_BF16
    assert sol.residual.dtype == jnp.float32
    # Too few steps on a contraction: also not converged, residual above the floor.
    w, x = _contraction(16, 0.9, jax.random.PRNGKey(1))
    g = lambda z, a: jnp.tanh(a[0] @ z + a[1])
    args = (w.astype(BF16), x.astype(BF16))
    sol = resode.fixed_point(g, jnp.zeros(16, BF16), args, solver="picard", max_steps=2)
    assert not bool(sol.converged)
    assert float(sol.residual) == pytest.approx(_rel_residual(g, sol.value, args), rel=1e-2)


def test_bfloat16_fixed_point_gradient_matches_float32():
    w, x = _contraction(16, 0.6, jax.random.PRNGKey(2))
    f = lambda z, a: jnp.tanh(a[0] @ z + a[1])

    def loss(w, dtype):
        args = (w.astype(dtype), x.astype(dtype))
        z = resode.fixed_point(f, jnp.zeros(16, dtype), args, solver="anderson", tol=1e-6).value
        return jnp.sum(z.astype(jnp.float32) ** 2)

    g16 = jax.grad(loss)(w.astype(jnp.float32), BF16)
    g32 = jax.grad(loss)(w.astype(jnp.float32), jnp.float32)
    assert g16.dtype == jnp.float32
    assert np.linalg.norm(g16 - g32) < 0.05 * np.linalg.norm(g32)


@pytest.mark.parametrize("splitting", ["peaceman_rachford", "forward_backward"])
@pytest.mark.parametrize("conv", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_monotone_fixed_point_in_bfloat16(splitting, conv):
    key = jax.random.PRNGKey(3)
    if conv:
        op = resode.ConvMonotone(2, (8,), monotonicity=0.5, key=key, dtype=jnp.float32)
    else:
        op = resode.DenseMonotone(16, monotonicity=0.5, key=key, dtype=jnp.float32)
    bias = jax.random.normal(jax.random.PRNGKey(4), op.state_shape, jnp.float32)
    op16 = jax.tree_util.tree_map(lambda a: a.astype(BF16) if eqx.is_inexact_array(a) else a, op)
    sol = resode.monotone_fixed_point(op16, bias.astype(BF16), solver=splitting, max_steps=300)
    ref = resode.monotone_fixed_point(op, bias, solver=splitting, tol=1e-6, max_steps=2000)
    assert sol.value.dtype == BF16 and sol.residual.dtype == jnp.float32
    assert bool(sol.converged) and float(sol.residual) <= EPS_BF16
    scale = float(jnp.max(jnp.abs(ref.value)))
    assert float(jnp.max(jnp.abs(sol.value.astype(jnp.float32) - ref.value))) < 0.1 * scale


def test_ode_block_in_bfloat16_keeps_the_dtype_and_floors_its_tolerances():
    cast = lambda t, d: jax.tree_util.tree_map(
        lambda a: a.astype(d) if eqx.is_inexact_array(a) else a, t
    )
    w = 1.5 * jax.random.normal(jax.random.PRNGKey(5), (8, 8), jnp.float32)
    field = rn.FunctionField(w, lambda w, t, y, args: jnp.tanh(w @ y))
    to16 = lambda t: cast(t, BF16)
    y = jnp.linspace(-1, 1, 8, dtype=jnp.float32)
    out16, d16 = rn.ODEBlock(to16(field), rtol=1e-6, atol=1e-9, t1=3.0)(y.astype(BF16))
    out32, d32 = rn.ODEBlock(field, rtol=1e-6, atol=1e-9, t1=3.0)(y)
    assert out16.dtype == BF16 and d16.residual.dtype == jnp.float32
    assert bool(d16.converged)
    # Held to bfloat16's epsilon, not to 1e-6: far fewer steps than float32 needs for 1e-6.
    assert int(d16.solver_steps) < int(d32.solver_steps)
    scale = float(jnp.max(jnp.abs(out32)))
    # (measured 0.048 of the scale: rtol 7.8e-3 per step over 9 steps of a growing solution)
    assert float(jnp.max(jnp.abs(out16.astype(jnp.float32) - out32))) < 0.1 * scale


# --- training in bfloat16 -----------------------------------------------------------------------

_BODY = {
    "none": [],
    "plain": ["model.body.num_steps=2"],
    "residual": ["model.body.num_steps=2"],
    "implicit": ["model.body.scheme=backward_euler", "model.body.num_steps=1"],
    "deq": ["model.body.solver=anderson", "model.body.tol=1e-4"],
    "monotone_deq": ["model.body.solver=peaceman_rachford"],
    "ode": [],
}


def test_every_body_kind_is_covered():
    assert set(_BODY) == set(BODIES)


_FAST = ("residual",)  # the others compile for 6-19 s each: `make test-slow`


@pytest.mark.parametrize(
    "kind", [k if k in _FAST else pytest.param(k, marks=pytest.mark.slow) for k in sorted(_BODY)]
)
def test_bfloat16_training_lowers_the_loss(kind):
    cfg = load_config(
        None,
        [
            "model.width=16",
            "data.batch_size=64",
            "train.lr=0.01",
            "train.precision=bfloat16",
            f"model.body.kind={kind}",
            *_BODY[kind],
        ],
    )
    with jax.enable_x64(False):
        trainer = Trainer(cfg, load("digits"))
        state = trainer.init_state()
        state, m = trainer.train(state, 40)
        ev = trainer.evaluate(state.params)
        # Master parameters and optimiser state stay float32; the step computes in bfloat16.
        floats = [
            x.dtype
            for x in jax.tree_util.tree_leaves((state.params, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)
        ]
        assert floats and all(d == jnp.float32 for d in floats)
        hlo = trainer.compiled(state, 40).as_text()
    assert "bf16" in hlo
    loss = np.asarray(m["loss"])
    assert np.all(np.isfinite(loss))
    assert loss[-5:].mean() < 0.8 * loss[:5].mean()
    assert ev["test_loss"] < 0.9 * np.log(10)  # better than chance
    if kind in ("implicit", "deq", "monotone_deq"):
        # Reported convergence is the float32 residual against the floored tolerance.
        assert 0.0 < ev["test_residual"] < np.inf
        assert ev["test_fraction_converged"] > 0.5
