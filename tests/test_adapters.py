"""Residual adapters (`resode.nn.add_adapters`) and training only some parameters."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resode.nn as rn
from resode.config import ConfigError, load_config
from resode.data import load
from resode.train import Trainer, train_run


@pytest.mark.parametrize(
    "body, kw",
    [
        ("residual", {}),
        ("residual", {"tied": True}),
        ("implicit", {"scheme": "backward_euler"}),
        ("deq", {}),
        ("ode", {}),
    ],
)
def test_adapted_model_starts_as_the_base_model(body, kw):
    model = rn.build_classifier(
        in_shape=(6,), num_classes=3, width=8, body=body, num_steps=3,
        key=jax.random.PRNGKey(0), **kw,
    )  # fmt: skip
    adapted = rn.add_adapters(model, 4, key=jax.random.PRNGKey(1))
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 6))
    out = jax.vmap(lambda xi: model(xi)[0])(x)
    np.testing.assert_array_equal(jax.vmap(lambda xi: adapted(xi)[0])(x), out)
    # One adapter per untied step, one for a tied field: 8 -> 4 -> 8 with biases.
    per = 8 * 4 + 4 + 4 * 8 + 8
    steps = 3 if body in ("residual", "implicit") and not kw.get("tied") else 1
    assert rn.count_params(adapted) - rn.count_params(model) == steps * per
    # The mask selects exactly the adapters' parameters.
    mask = rn.adapter_mask(adapted)
    chosen, _ = eqx.partition(eqx.filter(adapted, eqx.is_inexact_array), mask)
    assert sum(a.size for a in jax.tree_util.tree_leaves(chosen)) == steps * per
    # Once trained, the adapter changes the output (it is wired in).
    bumped = jax.tree_util.tree_map(
        lambda a, m: a + 0.1 if (m and eqx.is_inexact_array(a)) else a, adapted, mask
    )
    assert not np.allclose(jax.vmap(lambda xi: bumped(xi)[0])(x), out)


def test_adapters_refuse_bodies_without_a_residual_field():
    for body in ("plain", "monotone_deq", "none"):
        model = rn.build_classifier(
            in_shape=(6,), num_classes=3, width=8, body=body, num_steps=2,
            key=jax.random.PRNGKey(0),
        )  # fmt: skip
        with pytest.raises(TypeError, match="add_adapters"):
            rn.add_adapters(model, 4, key=jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="hidden"):
        rn.add_adapters(model, 0, key=jax.random.PRNGKey(1))


SMALL = ["model.width=16", "data.batch_size=64", "train.steps=30", "train.steps_per_call=10",
         "train.checkpoint_every=30", "eval.every=30", "train.lr=0.01"]  # fmt: skip


def _leaves(model, mask, want):
    """The floating-point arrays of `model` whose mask flag is `want`."""
    leaves, treedef = jax.tree_util.tree_flatten(model)
    flags = treedef.flatten_up_to(mask)
    return [
        np.asarray(a)
        for a, m in zip(leaves, flags, strict=True)
        if eqx.is_inexact_array(a) and bool(m) == want
    ]


@pytest.mark.slow  # ~15 s (two trainings); `make test-slow`
def test_training_adapters_only_leaves_the_base_as_it_was(tmp_path):
    with jax.enable_x64(False):
        base_dir = tmp_path / "base"
        train_run(load_config(None, SMALL), base_dir, quiet=True)
        cfg = load_config(
            None,
            [*SMALL, "model.adapter_hidden=4", "train.trainable=adapters",
             f"train.init_from={base_dir}"],
        )  # fmt: skip
        trainer = Trainer(cfg, load("digits"))
        start = trainer.model(trainer.params0)
        base = Trainer(load_config(base_dir / "config.yaml"), load("digits"))
        from resode.train import load_checkpoint
        from resode.train._loop import _host

        saved, _ = load_checkpoint(base_dir, _host(base.init_state()))
        x = jnp.asarray(load("digits").x_test[:16])
        # The adapted model starts from the base run's final parameters, output unchanged.
        np.testing.assert_allclose(
            jax.vmap(lambda xi: start(xi, inference=True)[0])(x),
            jax.vmap(lambda xi: base.model(saved.params)(xi, inference=True)[0])(x),
            rtol=1e-6, atol=1e-6,
        )  # fmt: skip
        state, m = trainer.train(trainer.init_state(), 20)
        end = trainer.model(_host(state.params))
    mask = rn.adapter_mask(end)
    for a, b in zip(_leaves(start, mask, False), _leaves(end, mask, False), strict=True):
        np.testing.assert_array_equal(a, b)  # every base parameter, bit for bit
    moved = [
        float(np.max(np.abs(a - b)))
        for a, b in zip(_leaves(start, mask, True), _leaves(end, mask, True), strict=True)
    ]
    assert max(moved) > 1e-4  # the adapters trained
    assert np.mean(m["loss"][-5:]) < np.mean(m["loss"][:5]) + 1e-6


@pytest.mark.slow  # ~10 s (a training); `make test-slow`
def test_head_only_training_leaves_the_rest(tmp_path):
    with jax.enable_x64(False):
        trainer = Trainer(load_config(None, [*SMALL, "train.trainable=head"]), load("digits"))
        start = trainer.model(trainer.params0)
        state, _ = trainer.train(trainer.init_state(), 10)
        end = trainer.model(state.params)
    assert not np.allclose(start.head.weight, end.head.weight)
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(start.body, eqx.is_inexact_array)),
        jax.tree_util.tree_leaves(eqx.filter(end.body, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_adapter_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.trainable: 'adapters' needs"):
        load_config(None, ["train.trainable=adapters"])
    with pytest.raises(ConfigError, match=r"^model\.adapter_hidden: .*not kind 'plain'"):
        load_config(None, ["model.adapter_hidden=4", "model.body.kind=plain"])
    with pytest.raises(ConfigError, match=r"^train\.init_from: .*not a run directory"):
        Trainer(load_config(None, [*SMALL, f"train.init_from={tmp_path}"]), load("digits"))


@pytest.mark.slow  # ~10 s (a base run); `make test-slow`
def test_init_from_a_different_model_is_refused_naming_the_key(tmp_path):
    with jax.enable_x64(False):
        train_run(load_config(None, SMALL), tmp_path / "base", quiet=True)
        with pytest.raises(ConfigError, match=r"^train\.init_from: model\.width is 16 in the run"):
            Trainer(
                load_config(None, [*SMALL, "model.width=8", f"train.init_from={tmp_path}/base"]),
                load("digits"),
            )


def test_remove_adapters_and_features():
    model = rn.build_classifier(
        in_shape=(6,), num_classes=3, width=8, num_steps=2, key=jax.random.PRNGKey(0)
    )
    adapted = rn.add_adapters(model, 4, key=jax.random.PRNGKey(1))
    bumped = jax.tree_util.tree_map(
        lambda a, m: a + 0.1 if (m and eqx.is_inexact_array(a)) else a,
        adapted,
        rn.adapter_mask(adapted),
    )
    stripped = rn.remove_adapters(bumped)
    assert jax.tree_util.tree_structure(stripped) == jax.tree_util.tree_structure(model)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 6))
    out = jax.vmap(lambda xi: model(xi)[0])(x)
    np.testing.assert_array_equal(jax.vmap(lambda xi: stripped(xi)[0])(x), out)
    # The features are the head's input.
    feats = jax.vmap(lambda xi: bumped.features(xi)[0])(x)
    assert feats.shape == (4, 8)
    np.testing.assert_allclose(
        jax.vmap(bumped.head)(feats), jax.vmap(lambda xi: bumped(xi)[0])(x), rtol=1e-12
    )
    assert not np.allclose(jax.vmap(lambda xi: bumped(xi)[0])(x), out)
