"""resode's GMRES and the matrix-free `linear_solve` built on it, against dense solves."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from resode.solvers._krylov import gmres
from resode.solvers._linear import linear_solve


def _system(n, seed, spread=0.3):
    rng = np.random.default_rng(seed)
    A = np.eye(n) + spread * rng.normal(size=(n, n)) / np.sqrt(n)
    return jnp.asarray(A), jnp.asarray(rng.normal(size=n))


@pytest.mark.parametrize("n, restart", [(1, 20), (5, 20), (40, 40), (40, 7), (60, 3)])
def test_gmres_matches_a_dense_solve(n, restart):
    A, b = _system(n, n + restart)
    x, steps = jax.jit(
        lambda b: gmres(lambda v: A @ v, b, rtol=1e-12, max_steps=1000, restart=restart)
    )(b)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-11)
    assert 1 <= int(steps) <= 1000
    assert float(jnp.linalg.norm(A @ x - b) / jnp.linalg.norm(b)) <= 1e-12


def test_gmres_stops_at_the_step_that_meets_the_tolerance():
    # A = I + rank-2 perturbation: the Krylov space holds the solution after 3 steps.
    rng = np.random.default_rng(0)
    U = rng.normal(size=(30, 2))
    A = jnp.asarray(np.eye(30) + U @ U.T / 30)
    b = jnp.asarray(rng.normal(size=30))
    x, steps = gmres(lambda v: A @ v, b, rtol=1e-10, max_steps=100, restart=20)
    assert int(steps) <= 3
    np.testing.assert_allclose(A @ x, b, rtol=1e-9)


def test_gmres_respects_max_steps_and_reports_honestly():
    A, b = _system(50, 1, spread=2.0)  # hard: needs many steps
    x, steps = gmres(lambda v: A @ v, b, rtol=1e-12, max_steps=4, restart=20)
    assert int(steps) == 4
    assert float(jnp.linalg.norm(A @ x - b) / jnp.linalg.norm(b)) > 1e-12


def test_gmres_zero_right_hand_side():
    x, steps = gmres(lambda v: 3.0 * v, jnp.zeros(4), rtol=1e-10, max_steps=10)
    np.testing.assert_array_equal(x, 0.0)
    assert int(steps) == 0


def test_linear_solve_on_pytrees_of_mixed_dtypes_and_tiny_scales():
    rhs = {"a": jnp.array([1e-30, -2e-30], jnp.float64), "b": jnp.array([3e-30], jnp.float32)}

    def matvec(v):
        return {
            "a": 2.0 * v["a"] + 0.1 * v["b"][0],
            "b": v["b"] - 0.2 * v["a"][:1].astype(jnp.float32),
        }

    x, _ = linear_solve(matvec, rhs, rtol=1e-6, max_steps=50)
    assert x["a"].dtype == jnp.float64 and x["b"].dtype == jnp.float32
    back = matvec(x)
    np.testing.assert_allclose(back["a"], rhs["a"], rtol=1e-5)
    np.testing.assert_allclose(back["b"], rhs["b"], rtol=1e-5)


def test_linear_solve_complex_r_linear_operator():
    """An operator with conj() is only R-linear; the solve works on (re, im) pairs."""
    rhs = jnp.array([1.0 + 2.0j, -0.5j])
    matvec = lambda z: 2.0 * z + 0.5j * jnp.conj(z)
    x, _ = linear_solve(matvec, rhs, rtol=1e-12, max_steps=50)
    np.testing.assert_allclose(matvec(x), rhs, rtol=1e-10)


def test_linear_solve_accepts_any_lineax_solver():
    A, b = _system(6, 3)
    x, _ = linear_solve(lambda v: A @ v, b, rtol=1e-10, max_steps=50, solver=lx.LU())
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-10)
