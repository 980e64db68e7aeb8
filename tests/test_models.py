"""Classifiers from a stem, any body and a head; function and flax.nnx interop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resode
import resode.nn as rn

KEY = jax.random.PRNGKey(0)


def _data(in_shape, n=64, classes=3, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(k1, (n, *in_shape))
    # A learnable rule: the class is the argmax of three fixed projections.
    proj = jax.random.normal(k2, (int(np.prod(in_shape)), classes))
    y = jnp.argmax(x.reshape(n, -1) @ proj, axis=1)
    return x, y


def _train(model, x, y, steps=40, lr=1e-2):
    opt = optax.adam(lr)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(m):
        logits, _ = jax.vmap(lambda xi: m(xi, inference=True))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(steps):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("body", rn.BODIES)
def test_every_body_kind_trains(body):
    x, y = _data((8,))
    model = rn.build_classifier(
        in_shape=(8,), num_classes=3, width=8, body=body, num_steps=3, key=KEY
    )
    logits, diag = model(x[0])
    assert logits.shape == (3,) and diag.converged.dtype == jnp.bool_
    losses = _train(model, x, y)
    assert losses[-1] < 0.7 * losses[0], losses[::10]


@pytest.mark.parametrize("stem, in_shape", [("conv1d", (2, 12)), ("conv2d", (1, 6, 6))])
def test_conv_stems(stem, in_shape):
    model = rn.build_classifier(
        in_shape=in_shape, num_classes=4, stem=stem, width=5, body="residual", key=KEY
    )
    logits, _ = model(jnp.ones(in_shape))
    assert logits.shape == (4,)
    with pytest.raises(ValueError, match="needs inputs of shape"):
        rn.build_classifier(in_shape=(12,), num_classes=4, stem=stem, key=KEY)


def test_parameter_counts_and_matching():
    untied = rn.build_classifier(
        in_shape=(8,), num_classes=3, width=8, hidden=8, num_steps=4, key=KEY
    )
    tied = rn.build_classifier(
        in_shape=(8,), num_classes=3, width=8, hidden=8, num_steps=4, tied=True, key=KEY
    )
    field = (8 * 8 + 8) * 2
    assert rn.count_params(untied) - rn.count_params(tied) == 3 * field
    # A tied stack with a wider field can match the untied parameter count.
    wide = rn.build_classifier(
        in_shape=(8,), num_classes=3, width=8, hidden=32, num_steps=4, tied=True, key=KEY
    )
    assert abs(rn.count_params(wide) - rn.count_params(untied)) < 0.05 * rn.count_params(untied)


@pytest.mark.parametrize(
    "kw",
    [
        dict(in_shape=(8,), body="residual", num_steps=4),
        dict(in_shape=(8,), body="deq", tied=True),
        dict(in_shape=(8,), body="residual", spectral_bound=0.5, spectral_method="power"),
        dict(in_shape=(1, 8, 8), stem="unet", body="plain", levels=1, num_steps=1),
    ],
)
def test_parameters_are_counted_on_shapes_alone(kw):
    # eqx.filter_eval_shape builds nothing; the count equals the built model's, buffers
    # (power-iteration vectors) left out in both.
    build = lambda: rn.build_classifier(num_classes=3, width=4, key=KEY, **kw)
    shapes = eqx.filter_eval_shape(build)
    assert isinstance(jax.tree_util.tree_leaves(shapes)[0], jax.ShapeDtypeStruct)
    assert rn.count_params(shapes) == rn.count_params(build()) > 0


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="Unknown body 'resnet'"):
        rn.build_classifier(in_shape=(4,), num_classes=2, body="resnet", key=KEY)
    with pytest.raises(ValueError, match="Unknown stem"):
        rn.build_classifier(in_shape=(4,), num_classes=2, stem="vit", key=KEY)
    with pytest.raises(ValueError, match="needs an implicit scheme"):
        rn.build_classifier(in_shape=(4,), num_classes=2, body="implicit", scheme="rk4", key=KEY)


def test_function_field():
    params = {"W": 0.5 * jnp.eye(3)}
    f = rn.FunctionField(params, lambda p, t, y, args: jnp.tanh(p["W"] @ y))
    y0 = jnp.ones(3)
    np.testing.assert_allclose(
        resode.integrate(f, y0, 0.0, 1.0, 4),
        resode.integrate(lambda t, y, a: jnp.tanh(0.5 * y), y0, 0.0, 1.0, 4),
    )
    g = jax.grad(lambda f: jnp.sum(resode.integrate(f, y0, 0.0, 1.0, 4)))(f)
    assert float(jnp.abs(g.params["W"]).sum()) > 0


def test_nnx_module_as_a_field_and_resode_stack_inside_an_nnx_model():
    from flax import nnx

    from resode.nn.nnx import NNXField, ResodeLayer

    class Field(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, t, y, args=None):
            return jnp.tanh(self.lin(y))

    field = NNXField(Field(nnx.Rngs(0)))
    y0 = jnp.ones(4)
    ref = resode.integrate(lambda t, y, a: field.to_nnx()(t, y), y0, 0.0, 1.0, 3)
    np.testing.assert_allclose(resode.integrate(field, y0, 0.0, 1.0, 3), ref, rtol=1e-6)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.inp = nnx.Linear(8, 4, rngs=rngs)
            self.body = ResodeLayer(
                rn.ResidualStack(lambda k: rn.MLPField(4, 8, key=k), 3, scheme="rk4", key=KEY)
            )
            self.out = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            h = self.inp(x)
            h, _ = jax.vmap(lambda v: self.body(v))(h)
            return self.out(h)

    model = Model(nnx.Rngs(1))
    x, y = _data((8,))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    before = model.body.module().field.layers[0].weight.copy()
    losses = [float(train_step(model, optimizer)) for _ in range(40)]
    assert losses[-1] < 0.7 * losses[0]
    # The stack inside the nnx model was trained too.
    assert not np.allclose(before, model.body.module().field.layers[0].weight)
