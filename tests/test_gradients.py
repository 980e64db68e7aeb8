"""Gradients of `integrate`: central finite differences (float64) and an unrolled reference."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ALL_SCHEMES,
    FD_RTOL,
    IMPLICIT,
    REF_RTOL,
    central_fd,
    field_args,
    rel_err,
    tanh_field,
)

import resode

NUM_STEPS = 4


def _loss(name, y0, W, b, **kwargs):
    y1 = resode.integrate(tanh_field, y0, 0.0, 1.0, NUM_STEPS, (W, b), scheme=name, **kwargs)
    return jnp.sum(y1**2) + jnp.sum(jnp.sin(y1))


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_gradients_match_finite_differences(name):
    y0, (W, b) = field_args()
    loss = jax.jit(lambda y0, W, b: _loss(name, y0, W, b))
    g_y0, g_W, g_b = jax.grad(loss, argnums=(0, 1, 2))(y0, W, b)
    assert rel_err(g_y0, central_fd(lambda y: loss(y, W, b), y0)) <= FD_RTOL
    assert rel_err(g_W, central_fd(lambda w: loss(y0, w, b), W)) <= FD_RTOL
    assert rel_err(g_b, central_fd(lambda c: loss(y0, W, c), b)) <= FD_RTOL


def _unrolled_step(tab, f, t, y, h, args, iters=12):
    """An independent implicit RK step: dense Newton on all stages at once, with every iteration
    kept on the tape (a scan, not a custom derivative), so autodiff goes through all of them."""
    s = tab.num_stages
    c, A, bw = (jnp.asarray(x) for x in (tab.c, tab.a, tab.b))

    def stage_f(Y):
        return jnp.stack([f(t + c[i] * h, Y[i], args) for i in range(s)])

    def residual(Yflat):
        Y = Yflat.reshape(s, -1)
        return (Y - (y + h * A @ stage_f(Y))).ravel()

    def newton(Y, _):
        return Y - jnp.linalg.solve(jax.jacfwd(residual)(Y), residual(Y)), None

    Y, _ = jax.lax.scan(newton, jnp.tile(y, s), None, length=iters)
    return y + h * bw @ stage_f(Y.reshape(s, -1))


@pytest.mark.parametrize("name", IMPLICIT)
def test_implicit_gradients_match_an_unrolled_converged_solve(name):
    y0, (W, b) = field_args()
    tab = resode.get_scheme(name).tableau
    h = 1.0 / NUM_STEPS

    def ref_loss(y0, W, b):
        def one(y, k):
            return _unrolled_step(tab, tanh_field, k * h, y, h, (W, b)), None

        y, _ = jax.lax.scan(one, y0, jnp.arange(NUM_STEPS, dtype=y0.dtype))
        return jnp.sum(y**2) + jnp.sum(jnp.sin(y))

    loss = jax.jit(lambda *a: _loss(name, *a))
    ref_loss = jax.jit(ref_loss)
    np.testing.assert_allclose(loss(y0, W, b), ref_loss(y0, W, b), rtol=1e-12)
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(y0, W, b)
    ref = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2)))(y0, W, b)
    for g, r in zip(got, ref, strict=True):
        assert rel_err(g, r) <= REF_RTOL


@pytest.mark.parametrize("name", ["rk4", "backward_euler", "gauss_legendre4"])
def test_gradients_through_closed_over_arrays(name):
    """Weights that f closes over (not passed as args) get the same gradients."""
    y0, (W, b) = field_args()

    @jax.jit
    def loss_closure(W):
        f = lambda t, y, args: tanh_field(t, y, (W, b))
        return jnp.sum(resode.integrate(f, y0, 0.0, 1.0, NUM_STEPS, scheme=name) ** 2)

    def loss_args(W):
        return jnp.sum(
            resode.integrate(tanh_field, y0, 0.0, 1.0, NUM_STEPS, (W, b), scheme=name) ** 2
        )

    g = jax.jit(jax.grad(loss_closure))(W)
    np.testing.assert_allclose(g, jax.jit(jax.grad(loss_args))(W), rtol=1e-10)
    assert rel_err(g, central_fd(loss_closure, W)) <= FD_RTOL


@pytest.mark.parametrize("name", ["rk4", "sdirk2", "radau_iia3"])
def test_gradient_with_respect_to_end_time(name):
    y0, args = field_args()
    loss = jax.jit(
        lambda t1: jnp.sum(
            resode.integrate(tanh_field, y0, 0.0, t1, NUM_STEPS, args, scheme=name) ** 2
        )
    )
    g = jax.grad(loss)(0.8)
    fd = (loss(0.8 + 1e-6) - loss(0.8 - 1e-6)) / 2e-6
    assert abs(float(g) - float(fd)) <= FD_RTOL * abs(float(fd))


@pytest.mark.parametrize("name", ["euler", "rk4", "trapezoid"])
def test_per_step_args_gradients(name):
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    Ws = jax.random.normal(keys[0], (3, 2, 2))
    y0 = jax.random.normal(keys[1], (2,))
    f = lambda t, y, W: jnp.tanh(W @ y)
    loss = jax.jit(
        lambda Ws: jnp.sum(
            resode.integrate(f, y0, 0.0, 1.0, 3, Ws, scheme=name, per_step_args=True) ** 2
        )
    )

    @jax.jit
    def loop_loss(Ws):
        y = y0
        for k in range(3):
            y = resode.step(f, k / 3, y, 1 / 3, Ws[k], scheme=name)
        return jnp.sum(y**2)

    g = jax.grad(loss)(Ws)
    np.testing.assert_allclose(g, jax.grad(loop_loss)(Ws), rtol=1e-10)
    assert rel_err(g, central_fd(loss, Ws)) <= FD_RTOL


@pytest.mark.parametrize("name", ["rk4", "implicit_midpoint", "gauss_legendre4"])
def test_complex_state_gradients(name):
    """A real loss of a complex state: gradient w.r.t. a real parameter."""
    z0 = jnp.array([1.0 + 0.5j, -0.3j])

    @jax.jit
    def loss(omega):
        f = lambda t, z, args: (1j * omega - 0.1) * z + 0.05 * z**2
        z1 = resode.integrate(f, z0, 0.0, 1.0, 8, scheme=name)
        return jnp.sum(jnp.abs(z1) ** 2 + z1.real)

    g = jax.grad(loss)(2.0)
    fd = (loss(2.0 + 1e-6) - loss(2.0 - 1e-6)) / 2e-6
    assert abs(float(g) - float(fd)) <= FD_RTOL * max(abs(float(fd)), 1.0)


def test_vmapped_gradients_equal_per_example_gradients():
    y0, (W, b) = field_args()
    y0s = jnp.stack([y0, -y0, 0.5 * y0])
    per = jax.jit(lambda y: jax.grad(lambda W: _loss("radau_iia3", y, W, b))(W))
    batched = jax.vmap(per)(y0s)
    for i in range(3):
        np.testing.assert_allclose(batched[i], per(y0s[i]), rtol=1e-10)


def test_float32_gradients_are_finite_and_close_to_float64():
    y0, (W, b) = field_args()
    g64 = jax.jit(jax.grad(lambda W: _loss("backward_euler", y0, W, b)))(W)
    f32 = lambda x: x.astype(jnp.float32)
    g32 = jax.jit(jax.grad(lambda W: _loss("backward_euler", f32(y0), W, f32(b))))(f32(W))
    assert g32.dtype == jnp.float32
    np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=1e-4)


def test_picard_adjoint_matches_gmres_adjoint():
    """The implicit adjoint's linear solve by fixed-point iteration equals the GMRES one."""
    from resode.solvers import ImplicitAdjoint, Picard, solve_fixed_point

    x = jnp.array([0.3, -0.2, 0.5])

    @eqx.filter_jit
    def loss(W, adjoint):
        sol = solve_fixed_point(
            lambda z, W: jnp.tanh(W @ z + x), jnp.zeros(3), W, Picard(), adjoint
        )
        return jnp.sum(sol.value**2)

    W = 0.4 * jnp.eye(3) + 0.1
    g_gmres = jax.grad(loss)(W, ImplicitAdjoint())
    g_picard = jax.grad(loss)(W, ImplicitAdjoint(solver=Picard(max_steps=200)))
    np.testing.assert_allclose(g_picard, g_gmres, rtol=1e-10)
    assert rel_err(g_gmres, central_fd(lambda w: loss(w, ImplicitAdjoint()), W)) <= FD_RTOL


@pytest.mark.parametrize("name", ["rk4", "backward_euler"])
def test_checkpointed_steps_give_the_same_gradients_with_less_memory(name):
    dim = 32
    y0, (W, b) = field_args(dim=dim)

    def loss(W, checkpoint):
        y1 = resode.integrate(
            tanh_field, y0, 0.0, 1.0, 64, (W, b), scheme=name, checkpoint=checkpoint
        )
        return jnp.sum(y1**2)

    plain = jax.jit(jax.grad(lambda W: loss(W, False)))
    ckpt = jax.jit(jax.grad(lambda W: loss(W, True)))
    np.testing.assert_allclose(ckpt(W), plain(W), rtol=1e-12)
    if name == "rk4":  # stages are stored per step without checkpointing
        mem = lambda fn: fn.lower(W).compile().memory_analysis().temp_size_in_bytes
        assert mem(ckpt) < mem(plain)
