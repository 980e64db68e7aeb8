import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ALL_SCHEMES, EXPLICIT, IMPLICIT, ORDER_SLACK, field_args, tanh_field

import resode


def _riccati(t, y, args):
    return -2.0 * t * y**2


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_measured_convergence_order(name):
    """Slope of log(error) vs log(h) on y' = -2 t y^2 (exact: y0 / (1 + y0 t^2)), float64."""
    y0 = jnp.array([1.0, 0.5])
    exact = y0 / (1.0 + y0)
    steps = np.array([8, 16, 32, 64])
    errors = [
        float(
            jnp.max(jnp.abs(resode.integrate(_riccati, y0, 0.0, 1.0, int(n), scheme=name) - exact))
        )
        for n in steps
    ]
    slope = np.polyfit(np.log(1.0 / steps), np.log(errors), 1)[0]
    assert abs(slope - resode.get_scheme(name).order) <= ORDER_SLACK, (name, slope, errors)


def test_stiff_decay():
    """y' = -1000 y with h = 0.01: forward Euler grows, backward Euler and SDIRK2 decay."""
    f = lambda t, y, args: -1000.0 * y
    y0 = jnp.array(1.0)
    euler = resode.integrate(f, y0, 0.0, 0.1, 10, scheme="euler")
    assert abs(float(euler)) > 1e9  # |1 - 10|^10
    for name in ("backward_euler", "sdirk2"):
        y1 = resode.integrate(f, y0, 0.0, 0.1, 10, scheme=name)
        assert 0 < abs(float(y1)) < 1e-6


@pytest.mark.parametrize("name", ALL_SCHEMES)
@pytest.mark.parametrize("lam", [-1000.0, -3.0 + 4.0j, 2.0j])
def test_linear_problem_follows_the_stability_function(name, lam):
    """On y' = lam y, n steps multiply y by R(h lam)^n exactly (up to round-off)."""
    h, n = 0.01, 20
    f = lambda t, y, args: lam * y
    y1 = resode.integrate(f, jnp.array(1.0 + 0j), 0.0, h * n, n, scheme=name)
    expected = resode.stability_function(name, np.array(h * lam + 0j)) ** n
    np.testing.assert_allclose(complex(y1), complex(expected), rtol=1e-9, atol=1e-300)


def test_euler_step_is_a_residual_block():
    y0, (W, b) = field_args()
    y1 = resode.step(tanh_field, 0.3, y0, 0.1, (W, b), scheme="euler")
    np.testing.assert_allclose(y1, y0 + 0.1 * tanh_field(0.3, y0, (W, b)), rtol=1e-14)


@pytest.mark.parametrize("name", IMPLICIT)
def test_implicit_step_solves_its_stage_equations(name):
    """y1 from an implicit step equals the explicit formula evaluated at the solved stages."""
    y0, args = field_args()
    h = 0.2
    tab = resode.get_scheme(name).tableau
    y1 = resode.step(tanh_field, 0.0, y0, h, args, scheme=name)
    # Reconstruct stages from a tight dense Newton solve and check the update formula.
    s = tab.num_stages

    def residual(Y):
        Y = Y.reshape(s, -1)
        F = jnp.stack([tanh_field(tab.c[i] * h, Y[i], args) for i in range(s)])
        return (Y - (y0 + h * tab.a @ F)).ravel()

    Y = jnp.tile(y0, s)
    for _ in range(30):
        Y = Y - jnp.linalg.solve(jax.jacfwd(residual)(Y), residual(Y))
    Y = Y.reshape(s, -1)
    F = jnp.stack([tanh_field(tab.c[i] * h, Y[i], args) for i in range(s)])
    np.testing.assert_allclose(y1, y0 + h * tab.b @ F, rtol=1e-12)


def test_backward_euler_is_the_implicit_residual_block():
    y0, args = field_args()
    h = 0.5
    y1 = resode.step(tanh_field, 0.0, y0, h, args, scheme="backward_euler")
    np.testing.assert_allclose(y1, y0 + h * tanh_field(h, y1, args), rtol=1e-12)


def test_step_equals_single_step_integrate():
    y0, args = field_args()
    for name in ("rk4", "sdirk2", "gauss_legendre4"):
        a = resode.step(tanh_field, 0.2, y0, 0.3, args, scheme=name)
        b = resode.integrate(tanh_field, y0, 0.2, 0.5, 1, args, scheme=name)
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name", ["euler", "rk4", "backward_euler"])
def test_per_step_args_equals_a_python_loop_of_blocks(name):
    num_steps, dim = 5, 4
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    Ws = jax.random.normal(keys[0], (num_steps, dim, dim)) / 2
    bs = jax.random.normal(keys[1], (num_steps, dim))
    y0 = jax.random.normal(keys[2], (dim,))
    f = lambda t, y, args: jnp.tanh(args[0] @ y + args[1])
    got = resode.integrate(f, y0, 0.0, 1.0, num_steps, (Ws, bs), scheme=name, per_step_args=True)
    h = 1.0 / num_steps
    y = y0
    for k in range(num_steps):
        W, b = Ws[k], bs[k]
        if name == "euler":
            y = y + h * jnp.tanh(W @ y + b)
        else:
            y = resode.step(f, k * h, y, h, (W, b), scheme=name)
    np.testing.assert_allclose(got, y, rtol=1e-12)
    # Different weights really are used: tying them to step 0 changes the answer.
    tied = resode.integrate(f, y0, 0.0, 1.0, num_steps, (Ws[0], bs[0]), scheme=name)
    assert not np.allclose(tied, got)


def test_per_step_args_with_static_leaves_and_bad_shapes():
    mlp = eqx.filter_vmap(lambda k: eqx.nn.Linear(3, 3, key=k))(
        jax.random.split(jax.random.PRNGKey(0), 4)
    )
    f = lambda t, y, layer: jnp.tanh(layer(y))
    y0 = jnp.ones(3)
    out = resode.integrate(f, y0, 0.0, 1.0, 4, mlp, scheme="euler", per_step_args=True)
    assert out.shape == (3,)
    with pytest.raises(ValueError, match=r"leading axis num_steps=5.*\(4, 3, 3\)"):
        resode.integrate(f, y0, 0.0, 1.0, 5, mlp, scheme="euler", per_step_args=True)


@pytest.mark.parametrize("name", ["rk4", "trapezoid", "radau_iia3"])
def test_pytree_state_with_leaves_of_different_shapes_and_dtypes(name):
    y0 = {"a": jnp.ones((2, 3)), "b": (jnp.array(0.5, jnp.float32), jnp.arange(4.0))}

    def f(t, y, args):
        return {"a": -y["a"] * jnp.sum(y["b"][1]), "b": (-y["b"][0], jnp.sin(y["b"][1]))}

    y1 = resode.integrate(f, y0, 0.0, 0.5, 10, scheme=name)
    assert jax.tree_util.tree_structure(y1) == jax.tree_util.tree_structure(y0)
    assert y1["a"].shape == (2, 3) and y1["b"][1].shape == (4,)
    assert y1["b"][0].dtype == jnp.float32 and y1["a"].dtype == jnp.float64
    # The float32 scalar leaf follows y' = -y: ten steps multiply it by R(-h)^10 exactly.
    expected = 0.5 * resode.stability_function(name, np.array(-0.05 + 0j)).real ** 10
    np.testing.assert_allclose(float(y1["b"][0]), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["rk4", "backward_euler", "gauss_legendre4"])
def test_float32_state_stays_float32(name):
    y0, (W, b) = field_args(dtype=jnp.float32)
    y1 = resode.integrate(tanh_field, y0, 0.0, 1.0, 4, (W, b), scheme=name)
    assert y1.dtype == jnp.float32
    ref = resode.integrate(
        tanh_field,
        y0.astype(jnp.float64),
        0.0,
        1.0,
        4,
        (W.astype(jnp.float64), b.astype(jnp.float64)),
        scheme=name,
    )
    np.testing.assert_allclose(y1, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["rk4", "implicit_midpoint", "gauss_legendre4", "radau_iia3"])
def test_complex_state(name):
    omega = 3.0
    f = lambda t, z, args: 1j * omega * z
    z1 = resode.integrate(f, jnp.array([1.0 + 0.0j, 0.5j]), 0.0, 1.0, 200, scheme=name)
    assert z1.dtype == jnp.complex128
    tol = {1: 1e-2, 2: 1e-3, 3: 1e-5, 4: 1e-7}[resode.get_scheme(name).order]
    np.testing.assert_allclose(z1, jnp.array([1.0, 0.5j]) * np.exp(1j * omega), atol=tol)


def test_complex_non_holomorphic_field_with_newton():
    """Newton's Krylov solve works on real/imaginary pairs, so conj() in f is fine."""
    f = lambda t, z, args: -z + 0.5 * jnp.conj(z) * 1j
    z0 = jnp.array([1.0 + 2.0j])
    got = resode.integrate(f, z0, 0.0, 1.0, 10, scheme="backward_euler")

    # Reference: the same scheme on the real 2-vector (x, y).
    def g(t, v, args):
        z = v[0] + 1j * v[1]
        w = f(t, z, args)
        return jnp.stack([w.real, w.imag])

    ref = resode.integrate(g, jnp.array([1.0, 2.0]), 0.0, 1.0, 10, scheme="backward_euler")
    np.testing.assert_allclose([got[0].real, got[0].imag], ref, rtol=1e-10)


@pytest.mark.parametrize("name", ["rk4", "backward_euler", "radau_iia3"])
def test_vmap_equals_loop(name):
    y0, (W, b) = field_args()
    y0s = jnp.stack([y0, 2 * y0, -y0])
    run = jax.jit(lambda y, args: resode.integrate(tanh_field, y, 0.0, 1.0, 5, args, scheme=name))
    batched = jax.vmap(run, in_axes=(0, None))(y0s, (W, b))
    for i in range(3):
        np.testing.assert_allclose(batched[i], run(y0s[i], (W, b)), rtol=1e-12)
    Ws = jnp.stack([W, 0.5 * W])
    batched_args = jax.vmap(run, in_axes=(None, (0, None)))(y0, (Ws, b))
    for i in range(2):
        np.testing.assert_allclose(batched_args[i], run(y0, (Ws[i], b)), rtol=1e-12)


@pytest.mark.parametrize("name", ["rk4", "sdirk2"])
def test_no_recompile_on_new_values(name):
    y0, (W, b) = field_args()

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(y0, W, b, t1):
        return resode.integrate(tanh_field, y0, 0.0, t1, 10, (W, b), scheme=name)

    run(y0, W, b, 1.0)
    run(2 * y0, W + 1, b - 1, 2.0)  # would raise on a second trace


@pytest.mark.parametrize("num_steps", [1, 1000])
def test_field_traced_once_whatever_num_steps(num_steps):
    calls = []

    def f(t, y, args):
        calls.append(1)
        return -y

    jax.make_jaxpr(lambda y: resode.integrate(f, y, 0.0, 1.0, num_steps, scheme="rk4"))(jnp.ones(2))
    assert len(calls) == 4  # four stages, traced once; the steps are a scan


def test_save_trajectory():
    f = lambda t, y, args: -y
    y0 = jnp.array([1.0, 2.0])
    ts, ys = resode.integrate(f, y0, 0.5, 1.5, 10, scheme="rk4", save_trajectory=True)
    assert ts.shape == (11,) and ys.shape == (11, 2)
    assert float(ts[0]) == 0.5 and float(ts[-1]) == 1.5
    np.testing.assert_array_equal(ys[0], y0)
    np.testing.assert_allclose(
        ys[-1], resode.integrate(f, y0, 0.5, 1.5, 10, scheme="rk4"), rtol=1e-15
    )
    np.testing.assert_allclose(ys, y0 * np.exp(-(np.asarray(ts)[:, None] - 0.5)), rtol=1e-6)


def test_time_is_passed_to_the_field_and_backwards_integration():
    f = lambda t, y, args: jnp.cos(t) * jnp.ones_like(y)
    y1 = resode.integrate(f, jnp.zeros(1), 1.0, 2.0, 50, scheme="rk4")
    np.testing.assert_allclose(y1, np.sin(2.0) - np.sin(1.0), rtol=1e-8)
    back = resode.integrate(f, y1, 2.0, 1.0, 50, scheme="rk4")
    np.testing.assert_allclose(back, 0.0, atol=1e-9)


def test_stats_explicit_and_implicit():
    y0, args = field_args()
    _, stats = resode.integrate(tanh_field, y0, 0.0, 1.0, 7, args, scheme="rk4", return_stats=True)
    assert int(stats.num_fevals) == 28 and int(stats.root_steps) == 0 and bool(stats.root_converged)
    _, stats = resode.integrate(
        tanh_field, y0, 0.0, 1.0, 7, args, scheme="backward_euler", return_stats=True
    )
    assert bool(stats.root_converged)
    assert 7 <= int(stats.root_steps) <= 7 * 6
    assert int(stats.num_fevals) == int(stats.root_steps)  # stiffly accurate: no extra evaluation
    assert int(stats.num_jvps) > 0
    assert 0 <= float(stats.root_residual) <= resode.solvers.default_tol(jnp.float64)
    _, one = resode.step(
        tanh_field, 0.0, y0, 0.1, args, scheme="gauss_legendre4", return_stats=True
    )
    assert (
        int(one.num_fevals) == 2 * int(one.root_steps) + 2
    )  # two stages per iterate, plus b-stage


def test_non_converging_stage_solve_reports_instead_of_raising():
    """Picard on a stiff stage diverges: the step returns a finite value and says it failed."""
    f = lambda t, y, args: -1000.0 * y
    run = jax.jit(
        lambda y: resode.integrate(
            f,
            y,
            0.0,
            0.1,
            10,
            scheme="backward_euler",
            root=resode.Picard(max_steps=30),
            return_stats=True,
        )
    )
    y1, stats = run(jnp.array([1.0]))
    assert not bool(stats.root_converged)
    assert bool(jnp.all(jnp.isfinite(y1)))
    assert float(stats.root_residual) > 1e-3
    # Newton on the same problem converges.
    _, ok = resode.integrate(
        f, jnp.array([1.0]), 0.0, 0.1, 10, scheme="backward_euler", return_stats=True
    )
    assert bool(ok.root_converged)


def test_root_solver_options():
    y0, args = field_args()
    ref = resode.integrate(tanh_field, y0, 0.0, 1.0, 5, args, scheme="trapezoid")
    for root in (
        "picard",
        resode.Picard(damping=0.7, tol=1e-13, max_steps=200),
        resode.Newton(linear_rtol=1e-3),
    ):
        got, stats = resode.integrate(
            tanh_field, y0, 0.0, 1.0, 5, args, scheme="trapezoid", root=root, return_stats=True
        )
        assert bool(stats.root_converged)
        np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_newton_line_search_solves_large_backward_euler_steps():
    """A backward-Euler stage of a saturating monotone field at h = 100: full Newton steps
    oscillate and never converge; backtracking converges to a true solution, and its extra
    evaluations are counted."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        w = jnp.asarray(rng.normal(size=(16, 8)) / np.sqrt(8))
        b = jnp.asarray(rng.normal(size=16))
        s = rng.normal(size=(8, 8))
        skew = jnp.asarray((s - s.T) / 2)
        f = lambda t, y, a: -w.T @ jnp.tanh(w @ y + b) + skew @ y
        x = jnp.asarray(rng.normal(size=(32, 8)) * 2)
        h = 100.0

        def solve(root):
            return jax.vmap(
                lambda xi: resode.step(
                    f, 0.0, xi, h, scheme="backward_euler", root=root, return_stats=True
                )
            )(x)

        _, plain = solve(resode.Newton(tol=1e-13, max_steps=60))
        assert not bool(plain.root_converged.all())
        y, st = solve(resode.Newton(tol=1e-13, max_steps=60, line_search=True))
        assert bool(st.root_converged.all())
        residual = jax.vmap(lambda yi, xi: yi - xi - h * f(0.0, yi, None))(y, x)
        assert float(jnp.abs(residual).max()) < 1e-9 * h
        assert bool((st.num_fevals > st.root_steps).any())  # backtracking evaluations counted
        # Where full steps already converge, the line search changes nothing.
        y1 = resode.step(f, 0.0, x[0], 0.1, scheme="backward_euler")
        y2 = resode.step(
            f, 0.0, x[0], 0.1, scheme="backward_euler", root=resode.Newton(line_search=True)
        )
        np.testing.assert_allclose(y1, y2, rtol=1e-12)
    with pytest.raises(ValueError, match="max_backtracks"):
        resode.Newton(line_search=True, max_backtracks=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(scheme="rk5"), ValueError, "Unknown scheme 'rk5'"),
        (dict(scheme="backward_euler", root="anderson?"), ValueError, "Unknown solver"),
        (dict(scheme="backward_euler", root=3), TypeError, "must be a name or an instance"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        resode.integrate(lambda t, y, a: -y, jnp.ones(2), 0.0, 1.0, 3, **kwargs)


def test_bad_num_steps_and_states():
    f = lambda t, y, a: -y
    for n in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="num_steps"):
            resode.integrate(f, jnp.ones(2), 0.0, 1.0, n)
    with pytest.raises(TypeError, match=r"y\['count'\].*int"):
        resode.integrate(f, {"count": jnp.arange(3)}, 0.0, 1.0, 2)
    with pytest.raises(ValueError, match="Picard: `damping`"):
        resode.Picard(damping=1.5)
    with pytest.raises(ValueError, match="max_steps"):
        resode.Newton(max_steps=0)


@pytest.mark.parametrize("name", EXPLICIT)
def test_explicit_schemes_trace_no_solver(name):
    jaxpr = jax.make_jaxpr(lambda y: resode.step(lambda t, y, a: -y, 0.0, y, 0.1, scheme=name))(
        jnp.ones(2)
    )
    assert "while" not in str(jaxpr)
