import math

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ALL_SCHEMES, CONTRACT_ORDERS, EXPLICIT, IMPLICIT, L_STABLE

import resode
from resode.schemes import (
    ButcherTableau,
    Scheme,
    measured_order,
    order_condition_residuals,
    rooted_trees,
)


def test_list_schemes_contains_the_contract():
    names = resode.list_schemes()
    assert isinstance(names, tuple)
    assert set(CONTRACT_ORDERS) <= set(names)


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_scheme_attributes(name):
    scheme = resode.get_scheme(name)
    assert scheme.name == name
    assert scheme.order == CONTRACT_ORDERS[name]
    assert isinstance(scheme.order, int)
    assert scheme.implicit == (name in IMPLICIT)
    s = scheme.tableau.b.shape[0]
    assert isinstance(scheme.tableau.a, np.ndarray) and scheme.tableau.a.shape == (s, s)
    assert scheme.tableau.c.shape == (s,)


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(ValueError) as info:
        resode.get_scheme("rk5")
    message = str(info.value)
    assert "rk5" in message
    for name in ALL_SCHEMES:
        assert name in message


def test_rooted_tree_counts():
    # OEIS A000081.
    assert [len(rooted_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_order_conditions_hold_to_declared_order_and_fail_beyond(name):
    scheme = resode.get_scheme(name)
    for p in range(1, min(scheme.order, 4) + 1):
        residuals = order_condition_residuals(scheme.tableau, p)
        assert max(abs(r) for r in residuals.values()) < 1e-12, (name, p, residuals)
    # The declared order is exact: some condition of the next order fails.
    nxt = order_condition_residuals(scheme.tableau, scheme.order + 1)
    assert max(abs(r) for r in nxt.values()) > 1e-6
    assert measured_order(scheme.tableau) == scheme.order


def test_sdirk2_gamma_and_structure():
    tab = resode.get_scheme("sdirk2").tableau
    gamma = 1 - 1 / math.sqrt(2)
    assert np.allclose(np.diag(tab.a), gamma)
    assert tab.diagonally_implicit and tab.stiffly_accurate


def test_tableau_kinds():
    assert resode.get_scheme("rk4").tableau.explicit
    assert resode.get_scheme("trapezoid").tableau.diagonally_implicit
    gl = resode.get_scheme("gauss_legendre4").tableau
    assert gl.implicit and not gl.diagonally_implicit and not gl.stiffly_accurate
    assert resode.get_scheme("radau_iia3").tableau.stiffly_accurate


@pytest.mark.parametrize(
    "a, b, c, match",
    [
        ([[0.0]], [0.9], None, "sum to 1"),
        ([[0, 0], [1, 0]], [0.5, 0.5], [0, 0.5], "row sums"),
        ([[0, 0], [1, 0]], [1.0], None, "shape"),
        ([[0, 0], [1, 0]], [0.5, 0.5], [0, 1, 2], "shape"),
        ([0, 0], [1.0], None, "2-D"),
        ([[np.nan]], [1.0], None, "non-finite"),
    ],
)
def test_tableau_validation(a, b, c, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau(a, b, c)


def test_tableau_is_frozen():
    tab = resode.get_scheme("rk4").tableau
    with pytest.raises(AttributeError):
        tab.a = np.zeros((4, 4))
    with pytest.raises(ValueError):
        tab.b[0] = 1.0


def test_user_scheme_order_is_measured_or_checked():
    mine = Scheme.from_tableau([[0, 0], [2 / 3, 0]], [1 / 4, 3 / 4], name="mine")
    assert mine.order == 2 and not mine.implicit
    with pytest.raises(ValueError, match="order conditions only up to order 2"):
        Scheme.from_tableau([[0, 0], [2 / 3, 0]], [1 / 4, 3 / 4], order=3)
    assert resode.get_scheme(mine) is mine
    assert resode.get_scheme(mine.tableau).order == 2


# --- stability functions -------------------------------------------------------------------------

Z = np.array([-3.0 + 0.5j, -0.5 - 2j, 0.3 + 0.1j, 1j, -10.0 + 0j, 0.7 - 0.2j])


@pytest.mark.parametrize(
    "name, closed_form",
    [
        ("euler", lambda z: 1 + z),
        ("backward_euler", lambda z: 1 / (1 - z)),
        ("trapezoid", lambda z: (1 + z / 2) / (1 - z / 2)),
        ("implicit_midpoint", lambda z: (1 + z / 2) / (1 - z / 2)),
        ("rk4", lambda z: 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24),
        ("rk38", lambda z: 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24),
        ("heun", lambda z: 1 + z + z**2 / 2),
        ("kutta3", lambda z: 1 + z + z**2 / 2 + z**3 / 6),
        ("gauss_legendre4", lambda z: (1 + z / 2 + z**2 / 12) / (1 - z / 2 + z**2 / 12)),
        ("radau_iia3", lambda z: (1 + z / 3) / (1 - 2 * z / 3 + z**2 / 6)),
    ],
)
def test_stability_function_closed_forms(name, closed_form):
    got = resode.stability_function(name, Z)
    assert isinstance(got, np.ndarray) and got.shape == Z.shape
    np.testing.assert_allclose(got, closed_form(Z), rtol=1e-12)
    # A JAX array in gives a JAX array out, with the same values.
    got_jax = resode.stability_function(resode.get_scheme(name), jnp.asarray(Z))
    np.testing.assert_allclose(np.asarray(got_jax), closed_form(Z), rtol=1e-10)


@pytest.mark.parametrize("name", IMPLICIT)
def test_implicit_schemes_are_a_stable(name):
    imag_axis = 1j * np.linspace(-50, 50, 201)
    assert np.all(np.abs(resode.stability_function(name, imag_axis)) <= 1 + 1e-12)
    rng = np.random.default_rng(0)
    left = -rng.exponential(10.0, 500) + 1j * rng.normal(0.0, 20.0, 500)
    assert np.all(np.abs(resode.stability_function(name, left)) <= 1 + 1e-12)


@pytest.mark.parametrize("name", EXPLICIT)
def test_explicit_schemes_are_not_a_stable(name):
    assert abs(resode.stability_function(name, np.array(-10.0 + 0j))) > 1


@pytest.mark.parametrize("name", L_STABLE)
def test_l_stable_schemes_damp_infinitely_stiff_modes(name):
    assert abs(resode.stability_function(name, np.array(-1e10 + 0j))) < 1e-9


def test_trapezoid_is_not_l_stable():
    assert abs(resode.stability_function("trapezoid", np.array(-1e10 + 0j))) > 0.99


def test_stability_function_pole_is_inf_not_an_exception():
    assert np.isinf(np.abs(resode.stability_function("backward_euler", np.array(1.0 + 0j))))
