"""resode.nn: vector fields, ResidualStack, DEQ, ODEBlock and their diagnostics."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FD_RTOL, central_fd, rel_err

import resode
import resode.nn as rn

DIM = 4
KEY = jax.random.PRNGKey(0)


def mlp(key, **kwargs):
    return rn.MLPField(DIM, 8, key=key, **kwargs)


def _y0(dtype=jnp.float64):
    return jax.random.normal(jax.random.PRNGKey(1), (DIM,), dtype)


# --- vector fields -----------------------------------------------------------------------------


def test_mlp_field_time_injection_and_zero_init():
    f = rn.MLPField(DIM, 8, depth=2, time_dependent=True, key=KEY)
    y, x = _y0(), jnp.ones(DIM)
    assert f(0.0, y).shape == (DIM,)
    assert not np.allclose(f(0.0, y), f(1.0, y))  # sees t
    np.testing.assert_allclose(f(0.3, y, x), f(0.3, y + x))  # injection adds to the state
    np.testing.assert_array_equal(rn.MLPField(DIM, 8, zero_init=True, key=KEY)(0.0, y), 0.0)


@pytest.mark.parametrize("dims, shape", [(1, (3, 16)), (2, (3, 8, 8))])
def test_conv_field_shapes(dims, shape):
    f = rn.ConvField(3, 5, num_spatial_dims=dims, time_dependent=True, key=KEY)
    y = jax.random.normal(KEY, shape)
    assert f(0.5, y).shape == shape
    assert not np.allclose(f(0.0, y), f(1.0, y))
    zero = rn.ConvField(3, 5, num_spatial_dims=dims, zero_init=True, key=KEY)
    np.testing.assert_array_equal(zero(0.0, y), 0.0)


@pytest.mark.parametrize(
    "dims, shape, kernel", [(1, (3, 16), 3), (1, (3, 9), 4), (2, (3, 8, 7), 3), (2, (3, 6, 6), 2)]
)
def test_conv_same_matmul_equals_lax_convolution(dims, shape, kernel):
    x = jax.random.normal(KEY, shape, jnp.float64)  # tests run with x64 enabled (conftest)
    conv = eqx.nn.Conv(dims, 3, 5, kernel, padding="SAME", key=KEY, dtype=jnp.float64)
    reference = conv(x)
    np.testing.assert_allclose(rn.conv_same(conv, x, "matmul"), reference, rtol=1e-12)
    np.testing.assert_allclose(rn.conv_same(conv, x, "lax"), reference, rtol=1e-12)
    no_bias = eqx.nn.Conv(dims, 3, 5, kernel, padding="SAME", use_bias=False, key=KEY)
    np.testing.assert_allclose(rn.conv_same(no_bias, x, "matmul"), no_bias(x), rtol=1e-6)
    fields = {
        impl: rn.ConvField(3, 4, num_spatial_dims=dims, conv_impl=impl, key=KEY)
        for impl in ("lax", "matmul")
    }
    np.testing.assert_allclose(fields["matmul"](0.0, x), fields["lax"](0.0, x), rtol=1e-6)
    grads = {
        impl: eqx.filter_grad(lambda f: jnp.sum(jnp.sin(f(0.0, x))))(f)
        for impl, f in fields.items()
    }
    np.testing.assert_allclose(
        grads["matmul"].conv_in.weight, grads["lax"].conv_in.weight, rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="conv_impl"):
        rn.ConvField(3, 4, conv_impl="fft", key=KEY)


def test_attention_field_is_a_prenorm_attention_block():
    f = rn.AttentionField(8, 2, key=KEY)
    y = jax.random.normal(KEY, (5, 8))
    h = jax.vmap(f.norm)(y)
    np.testing.assert_allclose(f(0.0, y), f.attention(h, h, h), rtol=1e-6)
    raw = rn.AttentionField(8, 2, layer_norm=False, key=KEY)
    assert raw.norm is None
    np.testing.assert_allclose(raw(0.0, y), raw.attention(y, y, y), rtol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        rn.AttentionField(7, 2, key=KEY)


def test_graph_field_and_laplacian():
    adjacency = jnp.array([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]])  # a path of three nodes
    L = rn.normalized_laplacian(adjacency)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(L, [[1, -s, 0], [-s, 1, -s], [0, -s, 1]], rtol=1e-6)
    f = rn.GraphField(2, L, key=KEY)
    X = jax.random.normal(KEY, (3, 2))
    np.testing.assert_allclose(f(0.0, X), -(L @ X) @ f.weight, rtol=1e-6)
    # The Laplacian is data: no gradient flows into it.
    g = jax.grad(lambda f: jnp.sum(f(0.0, X) ** 2))(f)
    np.testing.assert_array_equal(g.laplacian, 0.0)


# --- ResidualStack -----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["euler", "rk4", "backward_euler"])
def test_tied_stack_equals_integrate(scheme):
    stack = rn.ResidualStack(mlp, 6, scheme=scheme, tied=True, t1=2.0, key=KEY)
    y0 = _y0()
    got, _ = stack(y0)
    ref = resode.integrate(stack.field, y0, 0.0, 2.0, 6, scheme=scheme)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_untied_stack_equals_a_python_loop_of_blocks():
    stack = rn.ResidualStack(mlp, 5, scheme="euler", key=KEY)
    y = y0 = _y0()
    h = 1.0 / 5
    for k in range(5):
        block = jax.tree_util.tree_map(lambda a, k=k: a[k] if eqx.is_array(a) else a, stack.field)
        y = y + h * block(k * h, y)
    np.testing.assert_allclose(stack(y0)[0], y, rtol=1e-12)
    # The blocks really differ.
    assert not np.allclose(stack.field.layers[0].weight[0], stack.field.layers[0].weight[1])


def test_implicit_stack_matches_the_core_values_and_gradients():
    stack = rn.ResidualStack(mlp, 3, scheme="backward_euler", tied=True, key=KEY)
    y0 = _y0()
    loss_stack = lambda s: jnp.sum(s(y0)[0] ** 2)
    loss_core = lambda s: jnp.sum(
        resode.integrate(s.field, y0, 0.0, 1.0, 3, scheme="backward_euler") ** 2
    )
    np.testing.assert_allclose(loss_stack(stack), loss_core(stack), rtol=1e-12)
    g1 = eqx.filter_grad(loss_stack)(stack).field
    g2 = eqx.filter_grad(loss_core)(stack).field
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_zero_init_stack_is_the_identity():
    for tied in (True, False):
        stack = rn.ResidualStack(
            lambda k: mlp(k, zero_init=True), 4, scheme="rk4", tied=tied, key=KEY
        )
        np.testing.assert_array_equal(stack(_y0())[0], _y0())


def test_alpha_scales_the_residual_branch_and_can_be_learned():
    y0 = _y0()
    stack = rn.ResidualStack(mlp, 3, scheme="rk4", tied=True, alpha=0.5, key=KEY)
    ref = resode.integrate(lambda t, y, a: 0.5 * stack.field(t, y), y0, 0.0, 1.0, 3, scheme="rk4")
    np.testing.assert_allclose(stack(y0)[0], ref, rtol=1e-12)
    learned = rn.ResidualStack(mlp, 3, tied=True, alpha=0.5, learn_alpha=True, key=KEY)
    g = eqx.filter_grad(lambda s: jnp.sum(s(y0)[0] ** 2))(learned)
    assert float(jnp.abs(g.alpha)) > 0


def test_stochastic_depth_drops_in_training_and_is_deterministic_in_evaluation():
    stack = rn.ResidualStack(mlp, 8, drop_rate=0.5, key=KEY)
    y0 = _y0()
    survival = np.asarray(stack.survival())
    np.testing.assert_allclose(survival, 1 - 0.5 * np.arange(1, 9) / 8, rtol=1e-6)
    outs = {
        tuple(np.round(np.asarray(stack(y0, key=jax.random.PRNGKey(i))[0]), 10)) for i in range(6)
    }
    assert len(outs) > 1  # different keys drop different steps
    a, b = stack(y0, inference=True)[0], stack(y0, inference=True)[0]
    np.testing.assert_array_equal(a, b)
    # Evaluation scales step k by its survival probability: Euler's exact expectation.
    y, h = y0, 1.0 / 8
    for k in range(8):
        block = jax.tree_util.tree_map(lambda x, k=k: x[k] if eqx.is_array(x) else x, stack.field)
        y = y + h * survival[k] * block(k * h, y)
    np.testing.assert_allclose(a, y, rtol=1e-6)
    with pytest.raises(ValueError, match="needs `key`"):
        stack(y0)


def test_dropping_every_step_is_the_identity():
    stack = rn.ResidualStack(mlp, 4, drop_rate=0.999, key=KEY)
    # With survival nearly 0 everywhere but step 0, find a key that drops all four.
    for i in range(200):
        key = jax.random.PRNGKey(i)
        if not bool(jax.random.bernoulli(key, stack.survival()).any()):
            np.testing.assert_array_equal(stack(_y0(), key=key)[0], _y0())
            return
    pytest.fail("no key dropped every step")


def test_augmentation_appends_zero_channels():
    stack = rn.ResidualStack(lambda k: rn.MLPField(DIM + 2, 8, key=k), 3, augment=2, key=KEY)
    out, _ = stack(_y0())
    assert out.shape == (DIM + 2,)
    y_aug = jnp.concatenate([_y0(), jnp.zeros(2)])
    ref = resode.integrate(
        lambda t, y, fk: fk(t, y),
        y_aug,
        0.0,
        1.0,
        3,
        stack.field,
        scheme="euler",
        per_step_args=True,
    )
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_plain_stack_has_no_skip_connection():
    stack = rn.ResidualStack(mlp, 3, skip=False, key=KEY)
    y = y0 = _y0()
    for k in range(3):
        block = jax.tree_util.tree_map(lambda x, k=k: x[k] if eqx.is_array(x) else x, stack.field)
        y = block(k / 3, y)
    np.testing.assert_allclose(stack(y0)[0], y, rtol=1e-12)
    with pytest.raises(ValueError, match="plain stack"):
        rn.ResidualStack(mlp, 3, skip=False, scheme="rk4", key=KEY)


def test_checkpointed_stack_gives_the_same_gradients():
    y0 = _y0()
    a = rn.ResidualStack(mlp, 6, scheme="rk4", key=KEY)
    b = rn.ResidualStack(mlp, 6, scheme="rk4", checkpoint=True, key=KEY)
    ga = jax.grad(lambda s: jnp.sum(s(y0)[0] ** 2))(a)
    gb = jax.grad(lambda s: jnp.sum(s(y0)[0] ** 2))(b)
    for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12)


@pytest.mark.parametrize("depth", [1, 64])
def test_untied_stack_traces_its_field_once_whatever_the_depth(depth):
    calls = []

    class Counting(rn.AbstractVectorField):
        inner: rn.MLPField

        def __call__(self, t, y, args=None):
            calls.append(1)
            return self.inner(t, y, args)

    stack = rn.ResidualStack(lambda k: Counting(mlp(k)), depth, key=KEY)
    eqx.filter_make_jaxpr(lambda s, y: s(y))(stack, _y0())
    assert len(calls) == 1


def test_stack_diagnostics_are_true_counts():
    y0 = _y0()
    _, d = rn.ResidualStack(mlp, 5, scheme="rk4", key=KEY)(y0)
    assert int(d.num_fevals) == 20 and int(d.solver_steps) == 0 and bool(d.converged)
    stack = rn.ResidualStack(mlp, 5, scheme="backward_euler", tied=True, key=KEY)
    _, d = stack(y0)
    _, stats = resode.integrate(
        stack.field, y0, 0.0, 1.0, 5, scheme="backward_euler", return_stats=True
    )
    assert int(d.solver_steps) == int(stats.root_steps) > 5
    assert int(d.num_fevals) == int(stats.num_fevals)
    batch = jnp.stack([y0, 2 * y0, 0 * y0])
    _, db = jax.vmap(lambda y: stack(y))(batch)
    summary = db.summary()
    assert float(summary["fraction_converged"]) == 1.0
    assert float(summary["solver_steps"]) == float(jnp.mean(db.solver_steps))


# --- DEQ -----------------------------------------------------------------------------------------


def _deq(**kwargs):
    field = rn.MLPField(DIM, 8, key=KEY)
    field = eqx.tree_at(lambda f: f.layers[-1].weight, field, 0.3 * field.layers[-1].weight)
    return rn.DEQ(field, **kwargs)


def test_deq_solves_its_equilibrium_and_reports():
    deq = _deq(tol=1e-10, max_steps=100)
    x = _y0()
    z, d = deq(x)
    np.testing.assert_allclose(deq.field(0.0, z, x), z, rtol=1e-9)
    assert bool(d.converged) and float(d.residual) <= 1e-10 and int(d.solver_steps) >= 2


def test_deq_gradients_match_finite_differences():
    deq = _deq(tol=1e-12, max_steps=200)
    x = _y0()
    W = deq.field.layers[0].weight

    @jax.jit
    def loss(W):
        d = eqx.tree_at(lambda m: m.field.layers[0].weight, deq, W)
        return jnp.sum(jnp.sin(d(x)[0]))

    assert rel_err(jax.grad(loss)(W), central_fd(loss, W)) <= FD_RTOL
    gx = jax.grad(lambda x: jnp.sum(jnp.sin(deq(x)[0])))(x)
    assert rel_err(gx, central_fd(lambda x: jnp.sum(jnp.sin(deq(x)[0])), x)) <= FD_RTOL


def test_deq_test_time_options():
    deq = _deq(tol=1e-2, max_steps=3, eval_tol=1e-12, eval_max_steps=200)
    x = _y0()
    _, train = deq(x)
    _, test = deq(x, inference=True)
    assert int(train.solver_steps) <= 3
    assert bool(test.converged) and float(test.residual) <= 1e-12


def test_deq_jacobian_penalty_is_unbiased():
    deq = _deq()
    x = _y0()
    z, _ = deq(x)
    J = jax.jacobian(lambda w: deq.field(0.0, w, x))(z)
    exact = float(jnp.sum(J**2))
    estimate = float(deq.jacobian_penalty(z, x, key=KEY, num_samples=20000))
    assert abs(estimate - exact) <= 0.05 * exact
    g = jax.grad(lambda d: d.jacobian_penalty(z, x, key=KEY))(deq)
    assert float(jnp.sum(jnp.abs(g.field.layers[0].weight))) > 0


# --- ODEBlock ------------------------------------------------------------------------------------


def test_diffrax_is_imported_only_when_an_ode_block_runs():
    """resode (and its command line) start without diffrax and scipy (0.3 s of start-up
    together); the first ODEBlock call imports diffrax."""
    import subprocess
    import sys

    code = (
        "import sys, jax.numpy as jnp, jax.random as jr, resode.cli, resode.nn as rn\n"
        "assert 'diffrax' not in sys.modules, 'imported with resode'\n"
        "assert 'scipy' not in sys.modules, 'scipy imported with resode'\n"
        "block = rn.ODEBlock(rn.MLPField(2, 4, key=jr.PRNGKey(0)))\n"
        "assert 'diffrax' not in sys.modules, 'imported by the constructor'\n"
        "y, diag = block(jnp.ones(2))\n"
        "assert 'diffrax' in sys.modules and bool(diag.converged)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "dopri8", "kvaerno5"])
def test_ode_block_matches_integrate_with_many_small_steps(solver):
    field = rn.MLPField(DIM, 8, time_dependent=True, key=KEY)
    block = rn.ODEBlock(field, solver=solver, rtol=1e-10, atol=1e-12)
    y0 = _y0()
    y1, d = block(y0)
    ref = resode.integrate(field, y0, 0.0, 1.0, 400, scheme="rk4")
    np.testing.assert_allclose(y1, ref, rtol=1e-8, atol=1e-10)
    assert bool(d.converged) and int(d.solver_steps) > 1


@pytest.mark.parametrize("adjoint", ["recursive_checkpoint", "backsolve", "direct"])
def test_ode_block_adjoints_agree(adjoint):
    field = rn.MLPField(DIM, 8, key=KEY)
    y0 = _y0()
    loss = lambda f, a: jnp.sum(rn.ODEBlock(f, rtol=1e-10, atol=1e-12, adjoint=a)(y0)[0] ** 2)
    g = jax.grad(loss)(field, adjoint)
    ref = jax.grad(lambda f: jnp.sum(resode.integrate(f, y0, 0.0, 1.0, 400, scheme="rk4") ** 2))(
        field
    )
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("solver, dt0", [("tsit5", None), ("dopri5", 0.1), ("dopri8", None)])
def test_ode_block_counts_its_evaluations_truly(solver, dt0):
    count = [0]

    class Counting(rn.AbstractVectorField):
        inner: rn.MLPField

        def __call__(self, t, y, args=None):
            jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
            return self.inner(t, y, args)

    block = rn.ODEBlock(
        Counting(rn.MLPField(DIM, 8, key=KEY)), solver=solver, rtol=1e-6, atol=1e-8, dt0=dt0
    )
    y1, d = eqx.filter_jit(lambda b, y: b(y))(block, _y0())
    jax.block_until_ready(y1)
    assert int(d.num_fevals) == count[0]


def test_ode_block_bad_names():
    with pytest.raises(ValueError, match="unknown solver 'rk45'.*tsit5"):
        rn.ODEBlock(mlp(KEY), solver="rk45")
    with pytest.raises(ValueError, match="unknown adjoint"):
        rn.ODEBlock(mlp(KEY), adjoint="adjoint")


# --- every body: no recompilation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: rn.ResidualStack(mlp, 4, key=KEY),
        lambda: rn.ResidualStack(mlp, 4, scheme="trapezoid", tied=True, key=KEY),
        lambda: _deq(),
        lambda: rn.ODEBlock(mlp(KEY)),
    ],
)
def test_no_recompilation_on_a_second_call(make):
    body = make()

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(body, y):
        return jax.grad(lambda b: jnp.sum(b(y)[0] ** 2))(body)

    run(body, _y0())
    body2 = jax.tree_util.tree_map(lambda a: a * 1.01 if eqx.is_inexact_array(a) else a, body)
    run(body2, 2 * _y0())


def test_deq_probe_reports_the_backward_solve():
    deq = _deq(tol=1e-8, max_steps=100)
    xs = jnp.stack([_y0(), -_y0()])
    probe = resode.backward_probe(jnp.float64)

    def loss(d, probe):
        return jnp.sum(jax.vmap(lambda x: d(x, probe=probe)[0])(xs) ** 2)

    g_probe = jax.grad(loss, argnums=1)(deq, probe)
    stats = resode.BackwardStats.from_cotangent(g_probe)
    assert float(stats.num_solves) == 2.0 and float(stats.num_steps) >= 2.0
    assert float(stats.num_failed) == 0.0


def test_trajectory_runs_from_input_to_output():
    stack = rn.ResidualStack(
        lambda k: rn.MLPField(DIM + 1, 8, key=k), 5, scheme="rk4", augment=1, key=KEY
    )
    ys = stack.trajectory(_y0())
    assert ys.shape == (6, DIM + 1)
    np.testing.assert_array_equal(ys[0], stack.augmented(_y0()))
    np.testing.assert_allclose(ys[-1], stack(_y0())[0], rtol=1e-12)
    plain = rn.ResidualStack(mlp, 3, skip=False, key=KEY)
    ys = plain.trajectory(_y0())
    assert ys.shape == (4, DIM)
    np.testing.assert_allclose(ys[-1], plain(_y0())[0], rtol=1e-12)


def test_sequence_classifier_reads_the_last_token():
    body = rn.ResidualStack(
        lambda k: rn.AttentionField(8, 2, zero_init=True, key=k), 2, key=KEY
    )  # zero-initialised: the body starts as the identity
    model = rn.SequenceClassifier(5, 4, 8, 3, body, key=KEY)
    x = jax.random.normal(KEY, (4, 5))
    emb = jax.vmap(model.embed)(x) + model.positions
    np.testing.assert_allclose(model(x)[0], model.head(emb[-1]), rtol=1e-6)
    mean = rn.SequenceClassifier(5, 4, 8, 3, body, readout="mean", key=KEY)
    np.testing.assert_allclose(mean(x)[0], mean.head(emb.mean(0)), rtol=1e-6)
    with pytest.raises(ValueError, match="readout"):
        rn.SequenceClassifier(5, 4, 8, 3, body, readout="first", key=KEY)
