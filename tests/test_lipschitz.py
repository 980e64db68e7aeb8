"""Lipschitz control: spectral normalisation (exact and power iteration with state, MLP and conv
fields), the convolution symbol norm, dissipative fields, and the certified step / stack bounds
(closed forms, attained on linear fields, never exceeded by measured ratios)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resode.analysis as ra
import resode.nn as rn
from resode.config import ConfigError, load_config
from resode.data import load
from resode.nn._spectral import correlate
from resode.schemes import get_scheme, list_schemes, stability_function
from resode.train import Trainer


def _conv_matrix(w, spatial):
    """The zero-padded 'same' convolution with kernel `w` as a dense matrix."""
    x0 = jnp.zeros((w.shape[1], *spatial))
    jac = jax.jit(lambda w: jax.jacfwd(lambda x: correlate(w, x))(x0))(w)
    return np.asarray(jac).reshape(int(np.prod(jac.shape[: x0.ndim])), -1)


_advance = eqx.filter_jit(rn.update_spectral_state)
_field_jacobians = eqx.filter_jit(lambda f, y: jax.vmap(jax.jacfwd(lambda v: f(0.0, v)))(y))


def _circular_matrix(w, grid):
    """The circular convolution on `grid` as a dense matrix (wrap-around padding)."""
    nd = len(grid)
    pads = [(0, 0)] + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in w.shape[2:]]

    def op(x):
        xp = jnp.pad(x, pads, mode="wrap")
        return jax.lax.conv_general_dilated(xp[None], w, (1,) * nd, "VALID")[0]

    x0 = jnp.zeros((w.shape[1], *grid))
    jac = jax.jit(jax.jacfwd(op))(x0)
    return np.asarray(jac).reshape(int(np.prod(jac.shape[: x0.ndim])), -1)


@pytest.mark.parametrize(
    "shape, spatial", [((4, 3, 3, 3), (6, 5)), ((2, 3, 2, 2), (4, 4)), ((3, 2, 5), (9,))]
)
def test_conv_symbol_norm_is_the_circular_norm_and_bounds_the_padded_one(shape, spatial):
    w = jax.random.normal(jax.random.PRNGKey(len(spatial) + shape[-1]), shape)
    grid = tuple(n + k - 1 for n, k in zip(spatial, shape[2:], strict=True))
    sigma = float(rn.conv_symbol_norm(w, grid))
    np.testing.assert_allclose(sigma, np.linalg.norm(_circular_matrix(w, grid), 2), rtol=1e-10)
    padded = np.linalg.norm(_conv_matrix(w, spatial), 2)
    assert padded <= sigma * (1 + 1e-12) and padded > 0.5 * sigma
    # A 1x1 kernel is a channel mixing: its norm is the matrix's.
    w1 = w[..., :1] if len(spatial) == 1 else w[..., :1, :1]
    ones = tuple(1 for _ in spatial)
    np.testing.assert_allclose(
        float(rn.conv_symbol_norm(w1, tuple(spatial))),
        np.linalg.norm(np.asarray(w1).reshape(shape[0], shape[1]), 2),
        rtol=1e-10,
    )
    assert w1.shape[2:] == ones
    with pytest.raises(ValueError, match="grid"):
        rn.conv_symbol_norm(w, (1,) * len(spatial))


@pytest.mark.parametrize("bound, depth", [(0.3, 1), (2.0, 2)])
def test_power_iteration_normalisation_converges_to_the_bound(bound, depth):
    f = rn.MLPField(
        5, 9, depth=depth, spectral_bound=bound, spectral_method="power", key=jax.random.PRNGKey(3)
    )
    f = jax.tree_util.tree_map(lambda a: 10.0 * a if eqx.is_inexact_array(a) else a, f)
    c = bound ** (1.0 / (depth + 1))
    first = [float(jnp.linalg.norm(w, 2)) for w in f.weights()]
    for _ in range(60):
        f = _advance(f)
    norms = [float(jnp.linalg.norm(w, 2)) for w in f.weights()]
    # Power iteration underestimates sigma, so the used norm approaches c from above.
    np.testing.assert_allclose(norms, c, rtol=1e-6)
    assert all(n0 >= c * (1 - 1e-9) for n0 in first)
    for u in f.spectral_state:
        np.testing.assert_allclose(float(jnp.linalg.norm(u)), 1.0, rtol=1e-12)
    # The certificate takes exact norms of the weights the field uses.
    np.testing.assert_allclose(float(ra.lipschitz_constant(f)), np.prod(norms), rtol=1e-10)


def test_power_state_of_a_stacked_field_is_per_step():
    stack = rn.ResidualStack(
        lambda k: rn.MLPField(4, 6, spectral_bound=0.5, spectral_method="power", key=k),
        3,
        key=jax.random.PRNGKey(0),
    )
    assert [u.shape for u in stack.field.spectral_state] == [(3, 6), (3, 4)]
    big = jax.tree_util.tree_map(lambda a: 5.0 * a if eqx.is_inexact_array(a) else a, stack)
    for _ in range(80):
        big = _advance(big)
    per_step = ra.lipschitz_constant(big.field)
    assert per_step.shape == (3,)
    # Approached from above (the iteration's sigma never exceeds the true norm) at the rate of
    # the two largest singular values' ratio.
    assert np.all(np.asarray(per_step) >= 0.5 * (1 - 1e-9))
    np.testing.assert_allclose(np.asarray(per_step), 0.5, rtol=1e-2)


@pytest.mark.parametrize(
    "method, dims, spatial",
    [("exact", 2, (5, 4)), pytest.param("power", 1, (7,), marks=pytest.mark.slow)],
)
def test_conv_field_respects_its_bound(method, dims, spatial):
    bound = 0.7
    make = lambda k: rn.ConvField(
        2, 3, num_spatial_dims=dims, spectral_bound=bound, spectral_method=method,
        spectral_shape=spatial, key=k,
    )  # fmt: skip
    f = make(jax.random.PRNGKey(1))
    f = jax.tree_util.tree_map(lambda a: 4.0 * a if eqx.is_inexact_array(a) else a, f)
    for _ in range(100 if method == "power" else 0):
        f = _advance(f)
    K = float(ra.lipschitz_constant(f))
    ops = [np.linalg.norm(_conv_matrix(w, spatial), 2) for w in f.kernels()]
    if method == "exact":  # the symbol norm is normalised: certified at every step
        assert K <= bound * (1 + 1e-9)
    else:  # the zero-padded operators themselves are normalised (to the iteration's accuracy)
        np.testing.assert_allclose(ops, np.sqrt(bound), rtol=1e-3)
    y = jax.random.normal(jax.random.PRNGKey(2), (6, 2, *spatial))
    jac = _field_jacobians(f, y)
    n = 2 * int(np.prod(spatial))
    norms = np.linalg.norm(np.asarray(jac).reshape(6, n, n), 2, axis=(1, 2))
    assert norms.max() <= np.prod(ops) * (1 + 1e-9) and np.prod(ops) <= K * (1 + 1e-9)
    # A stacked untied field: one certificate per step, each within the bound.
    stacked = eqx.filter_vmap(make)(jax.random.split(jax.random.PRNGKey(4), 3))
    assert ra.lipschitz_constant(stacked).shape == (3,)
    with pytest.raises(ValueError, match="spectral_shape"):
        rn.ConvField(2, 3, spectral_bound=1.0, key=jax.random.PRNGKey(0))


def test_algebraic_stability_of_the_named_schemes():
    stable = {n for n in list_schemes() if get_scheme(n).tableau.algebraically_stable}
    assert stable == {"backward_euler", "implicit_midpoint", "gauss_legendre4", "radau_iia3"}


def test_dissipative_field_is_monotone_with_a_symmetric_jacobian():
    m = 0.3
    f = rn.DissipativeField(6, 10, margin=m, time_dependent=True, key=jax.random.PRNGKey(0))
    f = eqx.tree_at(lambda g: g.time_weight, f, jnp.linspace(-1, 1, 10))
    ka, kb = jax.random.split(jax.random.PRNGKey(1))
    a, b = 3 * jax.random.normal(ka, (50, 6)), 3 * jax.random.normal(kb, (50, 6))
    inner = jnp.sum((jax.vmap(lambda u, v: f(0.7, u) - f(0.7, v))(a, b)) * (a - b), axis=1)
    assert bool(jnp.all(inner <= -m * jnp.sum((a - b) ** 2, axis=1) + 1e-12))
    J = jax.jacfwd(lambda v: f(0.2, v))(a[0])
    np.testing.assert_allclose(J, J.T, atol=1e-12)
    eig = np.linalg.eigvalsh(np.asarray(J))
    K = float(ra.lipschitz_constant(f))
    assert eig.max() <= -m + 1e-12 and eig.min() >= -K - 1e-12
    assert float(ra.one_sided_lipschitz(f)) == -m
    with pytest.raises(ValueError, match="margin"):
        rn.DissipativeField(3, 4, margin=-1.0, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="nondecreasing"):
        rn.DissipativeField(3, 4, activation=jnp.sin, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("h, K", [(0.1, 2.0), (0.37, 0.8)])
def test_step_bounds_have_their_closed_forms(h, K):
    x = h * K
    np.testing.assert_allclose(ra.step_lipschitz_bound("euler", h, K), 1 + x, rtol=1e-14)
    np.testing.assert_allclose(
        ra.step_lipschitz_bound("rk4", h, K), 1 + x + x**2 / 2 + x**3 / 6 + x**4 / 24, rtol=1e-14
    )
    np.testing.assert_allclose(ra.step_lipschitz_bound("heun", h, K), 1 + x + x**2 / 2, rtol=1e-14)
    np.testing.assert_allclose(
        ra.step_lipschitz_bound("backward_euler", h, K), 1 / (1 - x), rtol=1e-14
    )
    nu = -0.9
    np.testing.assert_allclose(
        ra.step_lipschitz_bound("backward_euler", h, K, nu), 1 / (1 - h * nu), rtol=1e-14
    )
    for name in ("gauss_legendre4", "radau_iia3", "implicit_midpoint"):
        assert float(ra.step_lipschitz_bound(name, h, K, nu)) == 1.0
    # The trapezoid rule is not B-stable: no better bound than the generic one.
    assert float(ra.step_lipschitz_bound("trapezoid", h, K, nu)) > 1.0
    # Euler on a symmetric field with spectrum in [-K, nu].
    np.testing.assert_allclose(
        ra.step_lipschitz_bound("euler", h, K, nu, symmetric=True),
        max(abs(1 - x), abs(1 + h * nu)),
        rtol=1e-14,
    )
    assert np.isinf(float(ra.step_lipschitz_bound("backward_euler", 1.0, 2.0)))


@pytest.mark.parametrize("scheme, lam", [("rk4", 1.3), ("euler", 0.6), ("backward_euler", -2.0)])
def test_stack_bound_is_attained_by_a_linear_field(scheme, lam):
    """f(y) = lam y: the step multiplies by R(h lam), which the bound reaches exactly."""
    field = lambda k: rn.FunctionField(params=jnp.asarray(lam), fn=lambda p, t, y, a: p * y)
    stack = rn.ResidualStack(field, 5, scheme=scheme, tied=True, t1=0.8, key=jax.random.PRNGKey(0))
    h = 0.8 / 5
    R = float(np.real(stability_function(scheme, h * lam)))
    y, d = jnp.ones(3), 1e-3 * jnp.arange(1.0, 4.0)
    ratio = float(jnp.linalg.norm(stack(y + d)[0] - stack(y)[0]) / jnp.linalg.norm(d))
    np.testing.assert_allclose(ratio, abs(R) ** 5, rtol=1e-9)
    nu = jnp.asarray(lam)
    bound = float(jnp.prod(jnp.broadcast_to(ra.step_lipschitz_bound(scheme, h, abs(lam), nu), 5)))
    np.testing.assert_allclose(bound, abs(R) ** 5, rtol=1e-9)


def _max_ratio(stack, shape, seed=0, n=64):
    ka, kb, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
    y = 2 * jax.random.normal(ka, (n, *shape))
    far = jax.random.normal(kb, (n, *shape))
    near = 1e-4 * jax.random.normal(kc, (n, *shape))
    run = eqx.filter_jit(lambda v: jax.vmap(lambda vi: stack(vi, inference=True)[0])(v))
    out = run(y)
    ratios = []
    for d in (far, near):
        diff = (run(y + d) - out).reshape(n, -1)
        ratios.append(jnp.linalg.norm(diff, axis=1) / jnp.linalg.norm(d.reshape(n, -1), axis=1))
    return float(jnp.max(jnp.concatenate(ratios)))


@pytest.mark.parametrize(
    "case",
    ["mlp_euler", "mlp_rk4_tied", pytest.param("conv_power", marks=pytest.mark.slow), "plain",
     "drop", "adapted", "trapezoid", "dissipative_be", "dissipative_gauss", "dissipative_euler"],
)  # fmt: skip
def test_stack_bound_is_never_exceeded(case):
    key = jax.random.PRNGKey(7)
    shape = (4,)
    kw = {}
    if case == "mlp_euler":
        make, kw = (lambda k: rn.MLPField(4, 8, key=k)), {"alpha": -0.7}
    elif case == "mlp_rk4_tied":
        make, kw = (lambda k: rn.MLPField(4, 8, depth=2, key=k)), {"scheme": "rk4", "tied": True}
    elif case == "conv_power":
        shape = (2, 5, 5)
        make = lambda k: rn.ConvField(
            2, 3, spectral_bound=0.6, spectral_method="power", spectral_shape=(5, 5), key=k
        )
    elif case == "plain":
        make, kw = (lambda k: rn.MLPField(4, 8, key=k)), {"skip": False}
    elif case == "drop":
        make, kw = (lambda k: rn.MLPField(4, 8, key=k)), {"drop_rate": 0.5}
    elif case == "adapted":
        make = lambda k: rn.AdaptedField(
            rn.MLPField(4, 8, key=k), rn.MLPField(4, 3, key=jax.random.fold_in(k, 1))
        )
    elif case == "trapezoid":
        make, kw = (lambda k: rn.MLPField(4, 8, key=k)), {"scheme": "trapezoid", "t1": 0.3}
    else:
        scheme = {"be": "backward_euler", "gauss": "gauss_legendre4", "euler": "euler"}
        make = lambda k: rn.DissipativeField(4, 12, margin=0.2, key=k)
        kw = {"scheme": scheme[case.split("_")[1]], "t1": 2.0}
    stack = rn.ResidualStack(make, 4, key=key, **kw)
    bound = float(ra.stack_lipschitz_bound(stack))
    assert np.isfinite(bound)
    assert _max_ratio(stack, shape) <= bound * (1 + 1e-6)
    if case == "dissipative_be":
        np.testing.assert_allclose(bound, (1 / (1 + 0.5 * 0.2)) ** 4, rtol=1e-6)
    if case == "dissipative_gauss":
        assert bound == 1.0
    if case == "mlp_euler":
        K = ra.lipschitz_constant(stack.field)
        np.testing.assert_allclose(bound, np.prod(1 + 0.25 * 0.7 * np.asarray(K)), rtol=1e-6)


def test_reversible_stacks_and_unknown_fields_are_refused():
    stack = rn.ResidualStack(
        lambda k: rn.MLPField(4, 8, key=k), 2, reversible="momentum", key=jax.random.PRNGKey(0)
    )
    with pytest.raises(ValueError, match="reversible"):
        ra.stack_lipschitz_bound(stack)
    with pytest.raises(TypeError, match="AttentionField"):
        ra.lipschitz_constant(rn.AttentionField(4, 2, key=jax.random.PRNGKey(0)))
    graph = rn.GraphField(3, jnp.eye(5), time_dependent=True, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="t_max"):
        ra.lipschitz_constant(graph)


SMALL = ["data.batch_size=32", "train.steps=4", "train.steps_per_call=1", "train.lr=0.05",
         "model.body.spectral_bound=0.5", "model.body.spectral_method=power",
         "train.optimizer=adamw", "train.weight_decay=0.5"]  # fmt: skip


@pytest.mark.parametrize("stem", ["mlp", pytest.param("conv1d", marks=pytest.mark.slow)])
def test_training_advances_the_power_state_and_never_optimises_it(stem):
    extra = ["model.width=8"] if stem == "mlp" else ["model.width=4", "data.name=mnist1d"]
    cfg = load_config(None, [*SMALL, f"model.stem={stem}", *extra])
    with jax.enable_x64(False):
        trainer = Trainer(cfg, load(cfg.data.name))
        state = trainer.init_state()
        old = [np.asarray(u) for u in trainer.model(state.params).body.field.spectral_state]
        state, _ = trainer.train(state, 1)
        new = trainer.model(state.params)
        # Expected: one power iteration from the old vectors with the updated weights.
        with_old = eqx.tree_at(
            lambda m: m.body.field.spectral_state, new, tuple(jnp.asarray(u) for u in old)
        )
        expected = rn.update_spectral_state(with_old).body.field.spectral_state
        for got, want, before in zip(new.body.field.spectral_state, expected, old, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
            assert not np.allclose(np.asarray(got), before)
            per_step = np.linalg.norm(np.asarray(got).reshape(got.shape[0], -1), axis=1)
            np.testing.assert_allclose(per_step, 1.0, rtol=1e-5)  # a unit vector per step
        # The optimiser (Adam with weight decay) keeps no moments for the vectors.
        count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
        params = count(eqx.filter(new, eqx.is_inexact_array))
        assert count(state.opt_state) == 2 * (params - sum(u.size for u in old)) + 2  # 2 counters


def test_spectral_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^model\.body\.spectral_method: 'svd'"):
        load_config(None, ["model.body.spectral_bound=1", "model.body.spectral_method=svd"])
    with pytest.raises(ConfigError, match=r"^model\.body\.spectral_bound: kind 'none'"):
        load_config(None, ["model.body.kind=none", "model.body.spectral_bound=1"])


def test_graph_field_constant_covers_both_operators():
    A = jnp.asarray(load("karate").adjacency)
    L = rn.normalized_laplacian(A + jnp.eye(34))
    for operator in ("laplacian", "adjacency"):
        f = rn.GraphField(4, L, operator=operator, activation=jnp.tanh, key=jax.random.PRNGKey(2))
        op = L if operator == "laplacian" else jnp.eye(34) - L
        expected = np.linalg.norm(np.asarray(op), 2) * np.linalg.norm(np.asarray(f.weight), 2)
        np.testing.assert_allclose(float(ra.lipschitz_constant(f)), expected, rtol=1e-10)
        ka, kb = jax.random.split(jax.random.PRNGKey(3))
        a, b = jax.random.normal(ka, (34, 4)), jax.random.normal(kb, (34, 4))
        ratio = jnp.linalg.norm(f(0.0, a) - f(0.0, b)) / jnp.linalg.norm(a - b)
        assert float(ratio) <= expected * (1 + 1e-12)
