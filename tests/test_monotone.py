"""Monotone equilibria: the parameterisation's margin for random parameters, exact resolvents,
both splittings converging under their conditions, gradients against finite differences and an
unrolled reference (float64), vmap, the backward probe, the layer and its config."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_fd

import resode
from resode.config import ConfigError, load_config
from resode.nn import MonotoneDEQ, build_classifier

F64 = jnp.float64


def _ops(m=0.3, seed=0, scale=1.0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    ops = [
        resode.DenseMonotone(7, monotonicity=m, key=k[0], dtype=F64),
        resode.ConvMonotone(3, (6,), monotonicity=m, key=k[1], dtype=F64),
        resode.ConvMonotone(2, (4, 5), monotonicity=m, key=k[2], dtype=F64),
    ]
    return [eqx.tree_at(lambda o: (o.a, o.b), op, (scale * op.a, scale * op.b)) for op in ops]


def _bias(op, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), op.state_shape, F64)


@pytest.mark.parametrize("m", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_margin_holds_for_random_parameters_and_matches_the_dense_matrix(m, scale):
    for seed in range(2):
        for op in _ops(m, seed, scale):
            w = np.asarray(op.matrix())
            i_w = np.eye(w.shape[0]) - w
            lam = np.linalg.eigvalsh((i_w + i_w.T) / 2)[0]
            assert lam >= m - 1e-10 * max(1.0, scale**2)
            # Exact diagnostics (per-frequency for convolutions) agree with the dense matrix.
            np.testing.assert_allclose(float(op.min_eig()), lam, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(float(op.lipschitz()), np.linalg.norm(i_w, 2), rtol=1e-9)


def test_sym_margin_is_tight_when_a_is_rank_deficient():
    # A = 0: sym(I - W) = m I exactly, whatever B is.
    op = _ops(0.2)[0]
    op = eqx.tree_at(lambda o: o.a, op, jnp.zeros_like(op.a))
    np.testing.assert_allclose(float(op.min_eig()), 0.2, rtol=1e-12)


def test_transpose_and_resolvents_are_exact():
    for op in _ops():
        w = np.asarray(op.matrix())
        n = w.shape[0]
        z = _bias(op, 5)
        np.testing.assert_allclose(
            np.asarray(op.rmatvec(z)).ravel(), w.T @ np.asarray(z).ravel(), atol=1e-12
        )
        alpha = 0.7
        v = (1 + alpha) * np.eye(n) - alpha * w
        res = op.resolvent(alpha)
        for transpose, mat in ((False, v), (True, v.T)):
            x, steps = res.solve(z, transpose)
            assert x.shape == z.shape and int(steps) == 0
            np.testing.assert_allclose(
                mat @ np.asarray(x).ravel(), np.asarray(z).ravel(), atol=1e-12
            )


def _assert_fixed_point(op, b, z, tol):
    fz = jax.nn.relu(op.matvec(z) + b)
    assert float(jnp.linalg.norm(fz - z)) <= 10 * tol * float(jnp.linalg.norm(fz))


@pytest.mark.parametrize("alpha", [0.02, 1.0, 50.0])
def test_peaceman_rachford_converges_for_every_step(alpha):
    for op in _ops(0.2, scale=1.5):
        b = _bias(op)
        sol = resode.monotone_fixed_point(
            op, b, solver=resode.PeacemanRachford(alpha=alpha), tol=1e-10, max_steps=20000
        )
        assert bool(sol.converged), (type(op).__name__, alpha, float(sol.residual))
        _assert_fixed_point(op, b, sol.value, 1e-10)


@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_forward_backward_converges_below_its_bound(fraction):
    for op in _ops(0.4):
        b = _bias(op)
        bound = 2 * op.monotonicity / float(op.lipschitz()) ** 2
        sol = resode.monotone_fixed_point(
            op,
            b,
            solver=resode.ForwardBackward(alpha=fraction * bound),
            tol=1e-10,
            max_steps=20000,
        )
        assert bool(sol.converged)
        _assert_fixed_point(op, b, sol.value, 1e-10)
        np.testing.assert_allclose(float(sol.stats["alpha"]), fraction * bound)


def test_default_forward_backward_step_is_m_over_lipschitz_squared():
    op = _ops(0.4)[0]
    sol = resode.monotone_fixed_point(op, _bias(op), solver="forward_backward", max_steps=3)
    np.testing.assert_allclose(
        float(sol.stats["alpha"]), 0.4 / float(op.lipschitz()) ** 2, rtol=1e-12
    )


def test_all_solvers_find_the_same_unique_equilibrium():
    op = _ops(0.3)[1]
    b = _bias(op)
    sols = [
        resode.monotone_fixed_point(op, b, solver=s, tol=1e-11, max_steps=20000).value
        for s in (
            "peaceman_rachford",
            "forward_backward",
            resode.PeacemanRachford(alpha=0.3, resolvent="gmres", linear_rtol=1e-13),
        )
    ]
    # Started elsewhere, still the same point (uniqueness).
    z0 = 5.0 * jnp.ones(op.state_shape, F64)
    sols.append(resode.monotone_fixed_point(op, b, z0, tol=1e-11, max_steps=2000).value)
    for z in sols[1:]:
        np.testing.assert_allclose(np.asarray(z), np.asarray(sols[0]), atol=1e-9)


def test_gmres_resolvent_reports_its_linear_steps():
    op = _ops()[0]
    sol = resode.monotone_fixed_point(
        op, _bias(op), solver=resode.PeacemanRachford(resolvent="gmres"), tol=1e-8
    )
    assert bool(sol.converged) and int(sol.stats["num_linear_steps"]) >= int(sol.num_steps)


def test_non_convergence_is_reported_without_nan():
    op = _ops(0.05, scale=2.0)[0]
    sol = resode.monotone_fixed_point(op, _bias(op), solver="forward_backward", max_steps=2)
    assert not bool(sol.converged)
    assert bool(jnp.all(jnp.isfinite(sol.value))) and float(sol.residual) > 1e-6


def _loss(op, b, solver):
    sol = resode.monotone_fixed_point(op, b, solver=solver, tol=1e-13, max_steps=20000)
    return jnp.sum(jnp.sin(sol.value) * jnp.arange(1, sol.value.size + 1).reshape(b.shape))


def _unrolled_loss(op, b, steps=400):
    """Reference: autodiff through `steps` Peaceman--Rachford iterations (alpha 1, dense)."""
    w = op.matrix()
    n = w.shape[0]
    v = 2 * jnp.eye(n, dtype=w.dtype) - w
    bf = b.reshape(-1)

    def body(carry, _):
        z, u = carry
        u_half = 2 * z - u
        u = 2 * jnp.linalg.solve(v, u_half + bf) - u_half
        return (jax.nn.relu(u), u), None

    (z, _), _ = jax.lax.scan(body, (jnp.zeros(n, w.dtype), jnp.zeros(n, w.dtype)), None, steps)
    z = z.reshape(b.shape)
    return jnp.sum(jnp.sin(z) * jnp.arange(1, z.size + 1).reshape(b.shape))


@pytest.mark.parametrize("kind", [0, pytest.param(1, marks=pytest.mark.slow)])  # 1: conv, 18 s
def test_gradients_match_finite_differences_and_the_unrolled_reference(kind):
    op = _ops(0.3)[kind]
    b = _bias(op)
    g_op, g_b = jax.grad(_loss, argnums=(0, 1))(op, b, "peaceman_rachford")
    fd_b = central_fd(jax.jit(lambda bb: _loss(op, bb, "peaceman_rachford")), b)
    np.testing.assert_allclose(np.asarray(g_b), fd_b, rtol=1e-6, atol=1e-7)
    fd_a = central_fd(
        jax.jit(lambda a: _loss(eqx.tree_at(lambda o: o.a, op, a), b, "peaceman_rachford")), op.a
    )
    np.testing.assert_allclose(np.asarray(g_op.a), fd_a, rtol=1e-6, atol=1e-7)
    # Forward-backward's backward solve gives the same gradient.
    g_op_fb, g_b_fb = jax.grad(_loss, argnums=(0, 1))(op, b, "forward_backward")
    np.testing.assert_allclose(np.asarray(g_b_fb), np.asarray(g_b), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(g_op_fb.b), np.asarray(g_op.b), rtol=1e-8, atol=1e-10)
    # Unrolled autodiff through the iterations (through the matrix W, any parameterisation).
    r_op, r_b = jax.grad(_unrolled_loss, argnums=(0, 1))(op, b)
    np.testing.assert_allclose(np.asarray(g_b), np.asarray(r_b), rtol=1e-8, atol=1e-10)
    for name in ("a", "b"):
        np.testing.assert_allclose(
            np.asarray(getattr(g_op, name)), np.asarray(getattr(r_op, name)), rtol=1e-8, atol=1e-10
        )


def test_vmap_shares_weights_and_sums_their_gradients():
    op = _ops(0.3)[0]
    bs = jax.random.normal(jax.random.PRNGKey(3), (4,) + op.state_shape, F64)

    def batched(op):
        sols = jax.vmap(lambda b: resode.monotone_fixed_point(op, b, tol=1e-12, max_steps=500))(bs)
        return jnp.sum(sols.value**2), sols

    (_, sols), g = jax.value_and_grad(batched, has_aux=True)(op)
    assert sols.num_steps.shape == (4,) and bool(jnp.all(sols.converged))
    singles = [
        jax.grad(
            lambda o, b=b: jnp.sum(
                resode.monotone_fixed_point(o, b, tol=1e-12, max_steps=500).value ** 2
            )
        )(op)
        for b in bs
    ]
    np.testing.assert_allclose(np.asarray(g.a), sum(np.asarray(s.a) for s in singles), rtol=1e-8)


def test_backward_probe_reports_the_backward_solve():
    op = _ops(0.3)[0]
    b = _bias(op)

    def loss(b, probe):
        return jnp.sum(
            resode.monotone_fixed_point(op, b, tol=1e-10, max_steps=500, probe=probe).value
        )

    _, gp = jax.grad(loss, argnums=(0, 1))(b, resode.backward_probe(F64))
    stats = resode.BackwardStats.from_cotangent(gp)
    assert float(stats.num_solves) == 1 and float(stats.num_failed) == 0
    assert 1 <= float(stats.num_steps) <= 500 and float(stats.residual) <= 1e-10


def test_bad_input_names_the_culprit():
    op = _ops()[0]
    with pytest.raises(ValueError, match="Unknown splitting 'anderson'"):
        resode.monotone_fixed_point(op, _bias(op), solver="anderson")
    with pytest.raises(ValueError, match=r"`bias` has shape \(3,\)"):
        resode.monotone_fixed_point(op, jnp.zeros(3))
    with pytest.raises(ValueError, match="monotonicity"):
        resode.DenseMonotone(4, monotonicity=0.0, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="kernel_size"):
        resode.ConvMonotone(2, (8,), kernel_size=2, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="alpha"):
        resode.PeacemanRachford(alpha=0.0)


@pytest.mark.parametrize("spatial", [None, (4, 4)])
def test_layer_runs_under_jit_and_grad_with_diagnostics(spatial):
    key = jax.random.PRNGKey(0)
    layer = MonotoneDEQ(
        4, in_features=3, spatial_shape=spatial, monotonicity=0.5, tol=1e-5, max_steps=200, key=key
    )
    x = jnp.ones((3,) + (spatial or ()))
    z, diag = eqx.filter_jit(layer)(x)
    assert z.shape == (4,) + (spatial or ())
    assert bool(diag.converged) and int(diag.solver_steps) == int(diag.num_fevals) >= 1
    assert bool(jnp.all(z >= 0))
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x)[0]))(layer)
    assert (
        float(jnp.linalg.norm(grads.linear.a)) > 0
        and float(jnp.linalg.norm(grads.inject.weight)) > 0
    )


def test_classifier_body_and_config():
    cfg = load_config(
        None,
        [
            "model.body.kind=monotone_deq",
            "model.body.solver=forward_backward",
            "model.body.splitting_alpha=0.01",
            "model.body.monotonicity=0.5",
        ],
    )
    assert cfg.model.body.splitting_alpha == 0.01
    model = build_classifier(
        in_shape=(8,),
        num_classes=3,
        width=5,
        body="monotone_deq",
        solver="forward_backward",
        splitting_alpha=0.01,
        monotonicity=0.5,
        key=jax.random.PRNGKey(0),
    )
    assert isinstance(model.body, MonotoneDEQ) and model.body.solver.alpha == 0.01
    assert model.body.monotonicity == 0.5
    logits, diag = model(jnp.ones(8))
    assert logits.shape == (3,) and diag.solver_steps.shape == ()
    conv = build_classifier(
        in_shape=(1, 10),
        num_classes=3,
        stem="conv1d",
        width=4,
        body="monotone_deq",
        key=jax.random.PRNGKey(0),
    )
    assert isinstance(conv.body.linear, resode.ConvMonotone)
    assert isinstance(conv.body.solver, resode.PeacemanRachford)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["model.body.kind=monotone_deq", "model.body.solver=anderson"],
            r"^model\.body\.solver: 'anderson' is not allowed; choose one of: forward_backward, "
            r"peaceman_rachford",
        ),
        (
            ["model.body.kind=monotone_deq", "model.body.monotonicity=1.5"],
            r"^model\.body\.monotonicity: must be in \(0, 1\]",
        ),
        (
            ["model.body.kind=monotone_deq", "model.body.adjoint=jfb"],
            r"^model\.body\.adjoint: a monotone_deq",
        ),
        (
            ["model.body.kind=deq", "model.body.splitting_alpha=0.5"],
            r"^model\.body\.splitting_alpha: only kind 'monotone_deq'",
        ),
        (
            ["model.body.kind=monotone_deq", "model.body.splitting_alpha=-1"],
            r"^model\.body\.splitting_alpha: must be > 0",
        ),
    ],
)
def test_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_traced_step_sweeps_without_recompiling():
    op = _ops(0.3)[0]
    b = _bias(op)
    traces = []

    @eqx.filter_jit
    def solve(s):
        traces.append(1)  # runs once per compilation
        return resode.monotone_fixed_point(op, b, solver=s, tol=1e-10)

    for a in (0.5, 2.0):
        traced = solve(resode.PeacemanRachford(alpha=jnp.asarray(a)))
        fixed = resode.monotone_fixed_point(
            op, b, solver=resode.PeacemanRachford(alpha=a), tol=1e-10
        )
        assert int(traced.num_steps) == int(fixed.num_steps)
        np.testing.assert_allclose(np.asarray(traced.value), np.asarray(fixed.value), atol=1e-12)
    assert len(traces) == 1
    with pytest.raises(ValueError, match="alpha"):
        resode.ForwardBackward(alpha=jnp.asarray(-1.0))
