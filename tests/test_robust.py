"""Adversarial attacks (exact optima on linear models, radius and bounds, through every body kind)
and calibration metrics (hand-computed ECE, bins, invariance of predictions under shrinking)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resode.nn import build_classifier
from resode.robust import (
    calibration_bins,
    classifier_loss,
    expected_calibration_error,
    fgsm,
    pgd,
)


def _linear_problem(seed=0, n=5, d=7):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    w = jax.random.normal(k[0], (d,))
    x = jax.random.normal(k[1], (n, d))
    y = jnp.where(jax.random.bernoulli(k[2], 0.5, (n,)), 1.0, -1.0)
    return w, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("radius", [0.1, 0.7])
def test_pgd_and_fgsm_find_the_exact_optimum_of_a_linear_loss(norm, radius):
    w, x, y = _linear_problem()
    loss = lambda xi, yi: -yi * jnp.dot(w, xi)  # margin loss of a linear classifier
    direction = jnp.sign(w) if norm == "linf" else w / jnp.linalg.norm(w)
    best = x - radius * y[:, None] * direction[None]
    adv = pgd(loss, x, y, radius=radius, steps=20, norm=norm, random_start=False)
    np.testing.assert_allclose(np.asarray(adv), np.asarray(best), atol=1e-5)
    # From a random start it reaches 95 % of the optimal gain (L2 PGD with a fixed step turns
    # towards the optimum along the sphere only geometrically).
    adv = pgd(loss, x, y, radius=radius, steps=40, norm=norm, key=jax.random.PRNGKey(1))
    gain = jax.vmap(loss)(best, y) - jax.vmap(loss)(x, y)
    gap = jax.vmap(loss)(best, y) - jax.vmap(loss)(adv, y)
    assert float(jnp.max(gap / gain)) < 0.05
    np.testing.assert_allclose(
        np.asarray(fgsm(loss, x, y, radius=radius, norm=norm)), np.asarray(best), atol=1e-6
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_the_bounds(norm):
    w, x, y = _linear_problem(1)
    x = jnp.clip(x, -1.0, 1.0)  # valid inputs lie in the bounds
    loss = lambda xi, yi: jnp.sum(jnp.sin(3 * xi * w)) * yi  # non-linear, many local optima
    radius = 0.3
    adv = pgd(loss, x, y, radius=radius, steps=7, norm=norm, key=jax.random.PRNGKey(2),
              bounds=(-1.0, 1.0))  # fmt: skip
    d = np.asarray(adv - x)
    sizes = np.abs(d).max(axis=1) if norm == "linf" else np.linalg.norm(d, axis=1)
    assert np.all(sizes <= radius + 1e-6)
    assert np.all(np.asarray(adv) >= -1.0) and np.all(np.asarray(adv) <= 1.0)
    # It does not lower the loss it ascends (from the clean point, without a random start).
    adv0 = pgd(loss, x, y, radius=radius, steps=7, norm=norm, random_start=False)
    before = jax.vmap(loss)(x, y)
    after = jax.vmap(loss)(adv0, y)
    assert float(jnp.mean(after - before)) > 0


def test_attack_errors_name_the_argument():
    w, x, y = _linear_problem()
    loss = lambda xi, yi: jnp.dot(w, xi)
    with pytest.raises(ValueError, match="Unknown norm 'l1'"):
        pgd(loss, x, y, radius=0.1, norm="l1", key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="needs a `key`"):
        pgd(loss, x, y, radius=0.1)
    with pytest.raises(ValueError, match="radius"):
        fgsm(loss, x, y, radius=-1.0)


@pytest.mark.parametrize(
    "body",
    [
        "residual",
        "deq",
        # Each compiles an attack through a solver (10-20 s): run by `make test-slow`.
        pytest.param("implicit", marks=pytest.mark.slow),
        pytest.param("monotone_deq", marks=pytest.mark.slow),
        pytest.param("ode", marks=pytest.mark.slow),
    ],
)
def test_attacks_differentiate_through_every_body_kind(body):
    model = build_classifier(
        in_shape=(6,), num_classes=3, width=8, body=body, num_steps=2, max_steps=40,
        key=jax.random.PRNGKey(0),
    )  # fmt: skip
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    loss = classifier_loss(model)
    attack = jax.jit(lambda x, y: pgd(loss, x, y, radius=0.5, steps=3, random_start=False))
    adv = attack(x, y)
    assert bool(jnp.all(jnp.isfinite(adv)))
    assert float(jnp.max(jnp.abs(adv - x))) <= 0.5 + 1e-6
    assert float(jnp.mean(jax.vmap(loss)(adv, y))) > float(jnp.mean(jax.vmap(loss)(x, y)))


def test_ece_by_hand():
    # Four examples, two bins: confidences 0.9, 0.8 (bin 2; one right) and 0.6, 0.55 (bin 2 too
    # with 2 bins: (0.5, 1]); use 4 bins to separate them.
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 1])
    logits = np.log(probs)
    bins = calibration_bins(logits, labels, num_bins=4)
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 2])
    np.testing.assert_allclose(bins["confidence"][2:], [0.575, 0.85])
    np.testing.assert_allclose(bins["accuracy"][2:], [1.0, 0.5])
    expected = 0.5 * abs(1.0 - 0.575) + 0.5 * abs(0.5 - 0.85)
    np.testing.assert_allclose(expected_calibration_error(logits, labels, num_bins=4), expected)


def test_ece_of_a_calibrated_sampler_is_small_and_shrinking_keeps_predictions():
    rng = np.random.default_rng(0)
    n, c = 20000, 4
    logits = rng.normal(size=(n, c)) * 2.0
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(c, p=row) for row in p])  # labels drawn from the model itself
    assert expected_calibration_error(logits, labels) < 0.02
    # An over-confident copy (logits x3) has a large ECE; shrinking never changes the argmax.
    assert expected_calibration_error(3 * logits, labels) > 0.1
    for lam in (0.2, 0.5, 0.9):
        np.testing.assert_array_equal(((1 - lam) * logits).argmax(1), logits.argmax(1))


def test_spectral_bound_certifies_the_field_and_the_stack():
    import resode.analysis as ra
    import resode.nn as rn

    for bound, depth in ((0.3, 1), (2.0, 2)):
        f = rn.MLPField(5, 9, depth=depth, spectral_bound=bound, key=jax.random.PRNGKey(depth))
        f = jax.tree_util.tree_map(lambda a: 10.0 * a if eqx_inexact(a) else a, f)  # big weights
        norms = [float(jnp.linalg.norm(w, 2)) for w in f.weights()]
        assert np.prod(norms) <= bound * (1 + 1e-5)
        # The field's Jacobian never exceeds the bound, wherever it is evaluated.
        jac = jax.vmap(jax.jacfwd(lambda y, f=f: f(0.0, y)))(
            3 * jax.random.normal(jax.random.PRNGKey(0), (32, 5))
        )
        assert float(jnp.max(jnp.linalg.norm(jac, ord=2, axis=(-2, -1)))) <= bound * (1 + 1e-5)
    stack = rn.ResidualStack(
        lambda k: rn.MLPField(4, 8, spectral_bound=0.5, key=k), 4, key=jax.random.PRNGKey(1)
    )
    per_step = ra.lipschitz_bound(stack.field, 0.25)
    assert per_step.shape == (4,) and bool(jnp.all(per_step <= 1 + 0.25 * 0.5 + 1e-6))
    with pytest.raises(ValueError, match="spectral_bound"):
        rn.MLPField(4, 8, spectral_bound=0.0, key=jax.random.PRNGKey(0))


def eqx_inexact(a):
    import equinox as eqx

    return eqx.is_inexact_array(a)


def test_maximum_mean_discrepancy():
    from resode.robust import maximum_mean_discrepancy as mmd

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 3)), rng.normal(size=(50, 3)) + np.array([0.3, -0.2, 1.0])
    # The linear kernel's MMD^2 is exactly the squared distance of the means.
    m2, bw = mmd(a, b, kernel="linear")
    np.testing.assert_allclose(m2, np.sum((a.mean(0) - b.mean(0)) ** 2), rtol=1e-12)
    assert np.isnan(bw)
    # rbf: zero for identical samples, symmetric, larger for a shifted sample than a fresh draw
    # of the same law (with the bandwidth fixed once).
    same, bw = mmd(a, a)
    assert same == 0.0 and bw > 0
    shifted, bw = mmd(a, b)
    np.testing.assert_allclose(mmd(b, a, bandwidth=bw)[0], shifted, rtol=1e-12)
    fresh = mmd(a, rng.normal(size=(50, 3)), bandwidth=bw)[0]
    assert shifted > 3 * fresh > 0
    with pytest.raises(ValueError, match="features"):
        mmd(a, b[:, :2])
    with pytest.raises(ValueError, match="kernel"):
        mmd(a, b, kernel="poly")


def test_reliability_diagram_draws_the_bins(tmp_path):
    from resode.robust import calibration_bins, reliability_diagram

    rng = np.random.default_rng(1)
    logits, labels = 3 * rng.normal(size=(300, 4)), rng.integers(0, 4, 300)
    fig = reliability_diagram(logits, labels, num_bins=10, label="x3")
    ax = fig.axes[0]
    bins = calibration_bins(logits, labels, num_bins=10)
    used = bins["count"] > 0
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 0], bins["confidence"][used])
    np.testing.assert_allclose(points[:, 1], bins["accuracy"][used])
    ece = expected_calibration_error(logits, labels, num_bins=10)
    assert f"ECE {ece:.3f}" in ax.get_legend().get_texts()[-1].get_text()
    reliability_diagram(logits / 3, labels, num_bins=10, ax=ax, label="x1")  # a second model
    assert len(ax.collections) == 2
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
