"""In-memory training (`resode.train.fit`), models given to the Trainer, and their pieces."""

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resode.config import ConfigError, load_config
from resode.data import Dataset, load
from resode.nn import MLPField, ResidualStack, build_classifier, soft_threshold
from resode.train import Trainer, build_model, fit

SMALL = ["train.steps=30", "train.steps_per_call=10", "eval.every=30", "model.width=16"]


def _regression(seed=0, n=256, dim=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    t = (x + 0.5 * np.tanh(x[:, ::-1])).astype(np.float32)
    return Dataset("toy", "regression", 0, x[:200], t[:200], x[200:], t[200:], "toy")


def test_fit_trains_a_bare_residual_stack_as_a_regressor():
    data = _regression()
    cfg = load_config(None, [*SMALL, "train.lr=0.01", "data.batch_size=50"])
    model = ResidualStack(lambda k: MLPField(6, 16, key=k), 2, key=jax.random.PRNGKey(0))
    result = fit(cfg, data, model=model, evaluate_train=True)
    assert result.steps == 30 and not result.diverged
    assert result.history["loss"].shape == (30,)
    assert result.history["loss"][-5:].mean() < 0.5 * result.history["loss"][:5].mean()
    assert result.evaluation["test_accuracy"] is None  # regression
    assert {"test_loss", "train_loss", "train_num_fevals"} <= set(result.evaluation)
    assert isinstance(result.model, ResidualStack)


def test_reused_trainer_equals_a_fresh_one_for_the_same_seed():
    data = load("digits")
    cfg0 = load_config(None, [*SMALL, "seed=0"])
    cfg1 = dataclasses.replace(cfg0, seed=1)
    trainer = Trainer(cfg0, data)
    fresh = fit(cfg1, data)
    model1 = build_model(cfg1, data)  # seed 1's initialisation, as a fresh Trainer makes it
    assert eqx.tree_equal(model1, Trainer(cfg1, data).model(Trainer(cfg1, data).params0))
    reused = fit(cfg1, data, model=model1, trainer=trainer)
    np.testing.assert_allclose(reused.history["loss"], fresh.history["loss"], rtol=1e-6)
    assert reused.evaluation["test_loss"] == pytest.approx(fresh.evaluation["test_loss"], 1e-6)
    # evaluate=False: the same training, no evaluation (evaluate_train is then ignored).
    bare = fit(cfg1, data, model=model1, trainer=trainer, evaluate=False, evaluate_train=True)
    assert bare.evaluation == {}
    np.testing.assert_array_equal(bare.history["loss"], reused.history["loss"])
    assert eqx.tree_equal(bare.model, reused.model)


def test_evaluate_on_the_training_split():
    data = load("digits")
    trainer = Trainer(load_config(None, SMALL), data)
    state = trainer.init_state()
    ev = trainer.evaluate(state.params, split="train")
    assert set(ev) == {
        "train_loss",
        "train_accuracy",
        "train_num_fevals",
        "train_solver_steps",
        "train_residual",
        "train_fraction_converged",
    }
    with pytest.raises(ValueError, match="split"):
        trainer.evaluate(state.params, split="valid")


def test_soft_threshold_has_an_exact_dead_zone():
    u = jnp.array([-2.0, -0.5, -0.3, 0.0, 0.29, 0.5, 1.5])
    out = soft_threshold(u, 0.5)
    np.testing.assert_array_equal(out, jnp.array([-1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))


def test_bias_free_field_with_soft_threshold_is_identity_in_its_dead_zone():
    act = functools.partial(soft_threshold, threshold=0.7)
    field = MLPField(4, 8, activation=act, use_bias=False, key=jax.random.PRNGKey(0))
    assert all(layer.bias is None for layer in field.layers)
    w1 = field.layers[0].weight
    x = jax.random.normal(jax.random.PRNGKey(1), (4,))
    x = 0.69 * x / jnp.max(jnp.abs(w1 @ x))
    assert jnp.all(field(0.0, x) == 0.0)
    zero = MLPField(4, 8, use_bias=False, zero_init=True, key=jax.random.PRNGKey(0))
    assert jnp.all(zero(0.0, x) == 0.0)


def test_alpha_from_the_config_reaches_the_stack():
    data = load("digits")
    cfg = load_config(None, ["model.body.alpha=0.25", "model.width=8"])
    stack = Trainer(cfg, data).model(Trainer(cfg, data).params0).body
    assert stack.alpha == 0.25
    cfg = load_config(None, ["model.body.learn_alpha=true", "model.width=8"])
    params = Trainer(cfg, data).params0
    assert eqx.is_inexact_array(params.body.alpha)  # a trained parameter
    with pytest.raises(ConfigError, match="model.body.learn_alpha"):
        load_config(None, ["model.body.kind=deq", "model.body.learn_alpha=true"])
    model = build_classifier(
        in_shape=(4,), num_classes=2, alpha=3.0, key=jax.random.PRNGKey(0), width=4
    )
    assert model.body.alpha == 3.0


def test_experiment_helpers():
    from resode.experiments import fit_config, to_float64

    cfg = fit_config(40, 0.02, "seed=3", "train.steps_per_call=7")
    assert (cfg.train.steps, cfg.train.lr, cfg.eval.every, cfg.seed) == (40, 0.02, 40, 3)
    assert cfg.train.steps_per_call == 7
    with pytest.raises(ConfigError, match="train.steps_per_call"):
        fit_config(10, 0.1, "train.steps_per_call=0")
    field = MLPField(3, 4, key=jax.random.PRNGKey(0))
    tree = {"f": field, "c": jnp.ones(2, jnp.complex64), "i": jnp.arange(2), "s": "text"}
    with jax.enable_x64(True):
        cast = to_float64(tree)
    assert cast["f"].layers[0].weight.dtype == jnp.float64
    assert cast["c"].dtype == jnp.complex128
    assert cast["i"].dtype == tree["i"].dtype and cast["s"] == "text"
    np.testing.assert_array_equal(cast["f"].layers[0].weight, field.layers[0].weight)
