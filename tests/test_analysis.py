"""resode.analysis: spectral norms, eigenvalues, stability plots, Lipschitz bounds, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

import resode
import resode.nn as rn
from resode import analysis

KEY = jax.random.PRNGKey(0)


def _field(dim=6):
    return rn.MLPField(dim, 12, key=KEY)


def test_spectral_norm_matches_the_dense_jacobian():
    f = _field()
    y = jax.random.normal(KEY, (6,))
    J = jax.jacfwd(lambda y: f(0.0, y))(y)
    est = analysis.spectral_norm(lambda y: f(0.0, y), y, key=KEY, num_iters=300)
    np.testing.assert_allclose(float(est), float(jnp.linalg.norm(J, 2)), rtol=1e-6)


def test_spectral_norm_on_a_pytree_state_under_jit():
    A = jnp.array([[3.0, 1.0], [0.0, 2.0]])
    f = lambda y: {"a": A @ y["a"], "b": -0.5 * y["b"]}
    est = jax.jit(lambda y: analysis.spectral_norm(f, y, key=KEY, num_iters=200))(
        {"a": jnp.ones(2), "b": jnp.ones(3)}
    )
    np.testing.assert_allclose(float(est), float(jnp.linalg.norm(A, 2)), rtol=1e-6)


def test_jacobian_eigenvalues_sorted_by_real_part():
    A = jnp.diag(jnp.array([-3.0, 0.5, -1.0]))
    eig = analysis.jacobian_eigenvalues(lambda y: A @ y, jnp.ones(3))
    np.testing.assert_allclose(eig.real, [0.5, -1.0, -3.0])
    assert analysis.jacobian_eigenvalues(lambda y: A @ y, jnp.ones(3), k=1).shape == (1,)


def test_stability_plot_marks_points_by_the_exact_stability_function():
    points = np.array([-0.5 + 0j, -3.0 + 0j, 0.5j])
    fig = analysis.stability_plot("rk4", points)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    stable, unstable = ax.collections[-2], ax.collections[-1]
    # rk4: |R(-0.5)| < 1, |R(-3)| > 1, |R(0.5i)| < 1.
    assert len(stable.get_offsets()) == 2 and len(unstable.get_offsets()) == 1
    np.testing.assert_allclose(unstable.get_offsets()[0], [-3.0, 0.0])


def test_lipschitz_bound_bounds_the_residual_step():
    f = _field()
    h = 0.3
    bound = float(analysis.lipschitz_bound(f, h))
    ys = jax.random.normal(KEY, (200, 2, 6))
    step = lambda y: y + h * f(0.0, y)
    ratios = jax.vmap(
        lambda p: jnp.linalg.norm(step(p[0]) - step(p[1])) / jnp.linalg.norm(p[0] - p[1])
    )(ys)
    assert float(ratios.max()) <= bound
    # Per step for an untied stack.
    stack = rn.ResidualStack(lambda k: rn.MLPField(6, 12, key=k), 5, key=KEY)
    assert analysis.lipschitz_bound(stack.field, 0.2).shape == (5,)
    L = rn.normalized_laplacian(jnp.array([[0.0, 1.0], [1.0, 0.0]]))
    g = rn.GraphField(2, L, key=KEY)
    np.testing.assert_allclose(
        float(analysis.lipschitz_bound(g, 0.1)),
        1 + 0.1 * 2.0 * float(jnp.linalg.norm(g.weight, 2)),
        rtol=1e-5,
    )
    with pytest.raises(TypeError, match="spectral_norm"):
        analysis.lipschitz_bound(rn.AttentionField(4, 2, key=KEY), 0.1)
    with pytest.raises(ValueError, match="spatial_shape"):  # a conv needs the state's size
        analysis.lipschitz_bound(rn.ConvField(1, 2, key=KEY), 0.1)
    assert (
        float(analysis.lipschitz_bound(rn.ConvField(1, 2, key=KEY), 0.1, spatial_shape=(4, 4))) > 1
    )


@pytest.mark.parametrize(
    "scheme, tied", [("euler", False), ("rk4", True), ("backward_euler", False)]
)
def test_gradient_flow_matches_autodiff(scheme, tied):
    stack = rn.ResidualStack(
        lambda k: rn.MLPField(4, 8, key=k), 6, scheme=scheme, tied=tied, key=KEY
    )
    y0 = jax.random.normal(KEY, (4,))
    loss = lambda y: jnp.sum(jnp.sin(y))
    norms = analysis.gradient_flow(stack, y0, loss)
    assert norms.shape == (7,)
    g0 = jax.grad(lambda y: loss(stack(y, inference=True)[0]))(y0)
    np.testing.assert_allclose(float(norms[0]), float(jnp.linalg.norm(g0)), rtol=1e-6)
    np.testing.assert_allclose(
        float(norms[-1]), float(jnp.linalg.norm(jnp.cos(stack(y0)[0]))), rtol=1e-6
    )
    # The gradient at step 3 equals autodiff through the last three steps.
    fn, step_args = stack.step_function(inference=True, dtype=y0.dtype)
    _, ys = resode.integrate(
        fn, y0, 0.0, 1.0, 6, step_args, scheme=scheme, per_step_args=True, save_trajectory=True
    )
    tail = jax.tree_util.tree_map(
        lambda a: a[3:] if hasattr(a, "shape") and a.ndim else a, step_args
    )
    g3 = jax.grad(
        lambda y: loss(
            resode.integrate(fn, y, 0.5, 1.0, 3, tail, scheme=scheme, per_step_args=True)
        )
    )(ys[3])
    np.testing.assert_allclose(float(norms[3]), float(jnp.linalg.norm(g3)), rtol=1e-6)


def test_gradient_flow_of_a_plain_stack_matches_autodiff():
    stack = rn.ResidualStack(lambda k: rn.MLPField(4, 8, key=k), 5, skip=False, key=KEY)
    y0 = jax.random.normal(KEY, (4,))
    loss = lambda y: jnp.sum(jnp.sin(y))
    norms = analysis.gradient_flow(stack, y0, loss)
    assert norms.shape == (6,)
    g0 = jax.grad(lambda y: loss(stack(y, inference=True)[0]))(y0)
    np.testing.assert_allclose(float(norms[0]), float(jnp.linalg.norm(g0)), rtol=1e-6)
    ys = stack.trajectory(y0)
    np.testing.assert_allclose(float(norms[-1]), float(jnp.linalg.norm(jnp.cos(ys[-1]))))


def test_gradient_fidelity_of_approximate_adjoints():
    field = rn.MLPField(4, 8, key=KEY)
    field = jax.tree_util.tree_map(lambda a: 0.5 * a, field)  # contractive
    deq = rn.DEQ(field, tol=1e-10, max_steps=100)
    xs = jax.random.normal(KEY, (8, 4))
    report = analysis.gradient_fidelity(
        deq, xs, lambda z: jnp.sum(z**2), adjoints=("jfb", resode.Phantom(steps=30))
    )
    assert set(report) == {"jfb", "Phantom"}
    assert 0 < report["jfb"]["cosine"] < 1 and report["jfb"]["relative_error"] > 1e-4
    assert report["Phantom"]["cosine"] > 1 - 1e-6 and report["Phantom"]["relative_error"] < 1e-4
