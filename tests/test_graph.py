"""Graph networks: the embedded graph sets, graph fields, node classifiers from configs and the
masked node loss of the training loop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resode.nn as rn
from resode.config import ConfigError, load_config
from resode.data import fingerprint, load
from resode.train import Trainer

GRAPH = ["data.batch_size=1", "model.stem=graph", "model.width=8", "model.body.num_steps=3",
         "train.steps=20", "train.steps_per_call=10", "train.lr=0.02"]  # fmt: skip


def test_karate_is_zacharys_graph():
    d = load("karate")
    A = d.adjacency
    assert A.shape == (34, 34) and np.array_equal(A, A.T) and np.all(np.diag(A) == 0)
    assert A.sum() / 2 == 78  # friendships
    deg = A.sum(1)
    assert deg[0] == 16 and deg[33] == 17 and deg.min() == 1
    labels = np.maximum(d.y_train[0], d.y_test[0])
    assert np.bincount(labels).tolist() == [17, 17]
    assert labels[8] == 0 and labels[9] == 1  # networkx: node 8 "Mr. Hi", node 9 "Officer"
    # Every node is in exactly one split; two labelled members per club by default.
    assert np.all((d.y_train[0] >= 0) ^ (d.y_test[0] >= 0))
    assert np.bincount(d.y_train[0][d.y_train[0] >= 0]).tolist() == [2, 2]


def test_sbm_is_homophilous_and_seeded():
    d = load("sbm", num_nodes=240, seed=3)
    labels = np.maximum(d.y_train[0], d.y_test[0])
    i, j = np.nonzero(np.triu(d.adjacency))
    inside = np.mean(labels[i] == labels[j])
    assert 0.7 < inside < 0.95  # expected 5/6 with the default p_in, p_out
    assert np.bincount(labels).tolist() == [80, 80, 80]
    assert d.x_train.shape == (1, 240, 16) and d.y_train.shape == (1, 240)
    assert fingerprint(load("sbm", num_nodes=240, seed=3)) == fingerprint(d)
    assert fingerprint(load("sbm", num_nodes=240, seed=4)) != fingerprint(d)


def test_graph_field_operators_and_buffers():
    A = jnp.asarray(load("karate").adjacency)
    L = rn.normalized_laplacian(A + jnp.eye(34))
    X = jax.random.normal(jax.random.PRNGKey(0), (34, 5))
    k = jax.random.PRNGKey(1)
    diffusion = rn.GraphField(5, L, key=k)
    gcn = rn.GraphField(5, L, operator="adjacency", activation=jnp.tanh, key=k)
    np.testing.assert_allclose(diffusion(0.0, X), -(L @ X) @ diffusion.weight, rtol=1e-12)
    np.testing.assert_allclose(
        gcn(0.0, X), jnp.tanh((X - L @ X) @ gcn.weight), rtol=1e-12, atol=1e-14
    )
    # The Laplacian is a buffer: not counted as a parameter.
    mask = rn.buffer_mask(gcn)
    assert mask.laplacian is True and mask.weight is False
    assert rn.count_params(gcn) == 25
    with pytest.raises(ValueError, match="operator"):
        rn.GraphField(5, L, operator="random_walk", key=k)


def test_node_classifier_trains_on_labelled_nodes_only():
    cfg = load_config(
        None, [*GRAPH, "data.name=sbm", "train.optimizer=adamw", "train.weight_decay=0.5"]
    )
    data = load("sbm")
    with jax.enable_x64(False):
        trainer = Trainer(cfg, data)
        state = trainer.init_state()
        model0 = trainer.model(state.params)
        # The training loss is the mean cross-entropy over the labelled (training) nodes.
        logits = model0(jnp.asarray(data.x_train[0]))[0]
        y = data.y_train[0]
        keep = y >= 0
        by_hand = optax.softmax_cross_entropy_with_integer_labels(logits[keep], y[keep]).mean()
        ev = trainer.evaluate(state.params, split="train")
        np.testing.assert_allclose(ev["train_loss"], float(by_hand), rtol=1e-5)
        test = data.y_test[0] >= 0
        hand_acc = np.mean(np.asarray(logits).argmax(1)[test] == data.y_test[0][test])
        np.testing.assert_allclose(trainer.evaluate(state.params)["test_accuracy"], hand_acc)
        laplacians = [np.asarray(f.laplacian) for f in [model0.body.field]]
        state, metrics = trainer.train(state, 20)
        assert metrics["loss"][-1] < metrics["loss"][0]
        model = trainer.model(state.params)
        # Weight decay never touches the graph (a buffer).
        np.testing.assert_array_equal(np.asarray(model.body.field.laplacian), laplacians[0])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.name=digits", "model.stem=graph"], r"^model\.stem: 'graph' needs a graph"),
        (["data.name=sbm", "model.stem=mlp"], r"^model\.stem: 'sbm' is a graph"),
        (["data.name=sbm", "model.body.kind=monotone_deq"], r"^model\.body\.kind: 'monotone_deq'"),
    ],
)
def test_graph_config_errors_name_the_key(overrides, match):
    cfg = load_config(None, [*GRAPH, *overrides])
    with pytest.raises(ConfigError, match=match):
        Trainer(cfg, load(cfg.data.name))


@pytest.mark.parametrize("body", ["plain", "residual", "implicit", "deq", "ode"])
def test_every_body_kind_runs_on_a_graph(body):
    d = load("karate")
    kw = {"scheme": "backward_euler"} if body == "implicit" else {}
    model = rn.build_classifier(
        in_shape=d.input_shape, num_classes=2, stem="graph", width=4, body=body, num_steps=2,
        adjacency=d.adjacency, key=jax.random.PRNGKey(0), **kw,
    )  # fmt: skip
    out, diag = eqx.filter_jit(lambda m, x: m(x))(model, jnp.asarray(d.x_train[0]))
    assert out.shape == (34, 2) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("eta", [0.05, 0.6, 1.0])
def test_dirichlet_energy_formula_of_linear_propagation(eta):
    from resode.experiments import load_experiment

    exp = load_experiment("graph_oversmoothing")
    rng = np.random.default_rng(0)
    A = np.triu((rng.random((30, 30)) < 0.2).astype(float), 1)
    A = A + A.T
    L = np.asarray(rn.normalized_laplacian(jnp.asarray(A + np.eye(30))))
    X = rng.normal(size=(30, 4))
    depths = [0, 1, 5, 17]
    measured = exp.propagated_energies(L, X, eta, depths)
    formula = exp.formula_energies(L, X, eta, depths)
    for d in depths:
        assert abs(measured[d] - formula[d]) <= 1e-12 * measured[0]
    assert measured[0] == pytest.approx(float(np.trace(X.T @ L @ X)), rel=1e-12)
    # Energy never grows: |1 - eta lambda| <= 1 on the renormalised spectrum [0, 2).
    assert all(measured[a] >= measured[b] - 1e-12 for a, b in zip(depths, depths[1:], strict=False))
