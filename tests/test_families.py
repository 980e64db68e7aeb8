"""Model families beyond stem-body-head: the U-Net (dense prediction on the `shapes` set, long and
short skips) and the Transformer encoder (pre-, post- or no norm, residual scale alpha), built
from configs; segmentation scores; `data.options`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resode.nn as rn
from resode.analysis import label_boundaries, segmentation_scores
from resode.config import ConfigError, load_config, validate
from resode.data import SHAPE_CLASSES, fingerprint, load
from resode.train import Trainer

UNET = ["data.name=shapes", "data.options={size: 16, num_samples: 64}", "data.batch_size=8",
        "model.stem=unet", "model.width=4", "model.body.num_steps=1", "train.steps=20",
        "train.steps_per_call=10", "train.lr=0.01"]  # fmt: skip
TRANSFORMER = ["data.name=retrieval", "data.options={num_samples: 200}", "data.batch_size=16",
               "model.stem=transformer", "model.width=8", "model.heads=2",
               "model.body.num_steps=2", "train.steps=20", "train.steps_per_call=10",
               "train.lr=0.01"]  # fmt: skip


def test_shapes_labels_match_the_image_and_are_seeded():
    d = load("shapes", size=16, num_samples=50, noise=0.0, seed=1)
    assert d.x_train.shape == (40, 1, 16, 16) and d.y_train.shape == (40, 16, 16)
    assert d.num_classes == len(SHAPE_CLASSES) == 4 and d.y_train.dtype == np.int32
    # Without noise the image is exactly the foreground mask of the labels.
    np.testing.assert_array_equal(d.x_train[:, 0], (d.y_train > 0).astype(np.float32))
    assert set(np.unique(d.y_train)) <= {0, 1, 2, 3} and np.all((d.y_train > 0).any((1, 2)))
    assert fingerprint(load("shapes", size=16, num_samples=50, noise=0.0, seed=1)) == fingerprint(d)
    assert fingerprint(load("shapes", size=16, num_samples=50, noise=0.0, seed=2)) != fingerprint(d)
    with pytest.raises(ValueError, match="size"):
        load("shapes", size=4)


def test_segmentation_scores_by_hand():
    y = np.array([[[0, 1, 1], [0, 2, 2], [0, 0, -1]]])
    p = np.array([[[0, 1, 0], [1, 2, 2], [0, 0, 3]]])
    s = segmentation_scores(p, y, 4)
    # class 1: predicted {(0,1), (1,0)}, true {(0,1), (0,2)}: 1 / 3; class 2: 2 / 2; class 3 only
    # predicted on an unscored pixel: absent.
    assert s["iou"][1] == pytest.approx(1 / 3) and s["iou"][2] == 1.0 and s["iou"][3] is None
    assert s["iou"][0] == pytest.approx(3 / 5)
    assert s["mean_iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert s["pixel_accuracy"] == pytest.approx(6 / 8)
    edge = label_boundaries(y)
    assert edge[0, 2, 2] and not edge[0, 2, 0]
    assert s["boundary_accuracy"] == pytest.approx(
        np.sum((p == y) & edge & (y >= 0)) / np.sum(edge & (y >= 0))
    )
    with pytest.raises(ValueError, match="shape"):
        segmentation_scores(p[:, :2], y, 4)


def _unet(body="residual", long_skips=True, **kw):
    return rn.UNet((1, 16, 16), 4, width=4, levels=2, long_skips=long_skips, body=body,
                   num_steps=2, key=jax.random.PRNGKey(0), **kw)  # fmt: skip


_call = eqx.filter_jit(lambda m, x: m(x))


def test_unet_skips_change_no_parameters_and_zero_branches_leave_the_skeleton():
    counts = {
        (body, long): rn.count_params(_unet(body, long))
        for body in ("plain", "residual")
        for long in (False, True)
    }
    assert len(set(counts.values())) == 1
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 16))
    for long in (False, True):
        m = _unet("residual", long, zero_init=True)
        bare = _unet("none", long)  # the same stem, down/up convolutions and head: no bodies
        bare = eqx.tree_at(lambda b: (b.stem, b.downs, b.ups, b.head), bare,
                           (m.stem, m.downs, m.ups, m.head))  # fmt: skip
        out, diag = _call(m, x)
        np.testing.assert_allclose(out, _call(bare, x)[0], rtol=1e-12, atol=1e-12)
        assert out.shape == (16, 16, 4) and int(diag.num_fevals) == 5 * 2
    # The long skips matter once the branches are not zero: switching them off changes the output.
    a, b = _unet("residual", True), _unet("residual", False)
    assert float(jnp.max(jnp.abs(_call(a, x)[0] - _call(b, x)[0]))) > 1e-3


def test_unet_refuses_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 2\\^levels = 8"):
        rn.UNet((1, 12, 12), 4, levels=3, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="channels, height, width"):
        rn.UNet((12, 12), 4, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("implicit", marks=pytest.mark.slow),  # 8-10 s each to compile
        pytest.param("deq", marks=pytest.mark.slow),
        "ode",
        pytest.param("monotone_deq", marks=pytest.mark.slow),
    ],
)
def test_every_body_kind_runs_in_a_unet(body):
    kw = {"scheme": "backward_euler"} if body == "implicit" else {}
    m = _unet(body, **kw)
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 16))
    out, diag = _call(m, x)
    assert out.shape == (16, 16, 4) and bool(jnp.all(jnp.isfinite(out)))
    assert int(diag.num_fevals) > 5  # five bodies, each evaluating its field at least once


@pytest.mark.slow  # about 35 s: compiles a UNet's training step
def test_unet_from_a_config_trains_on_per_pixel_labels():
    cfg = load_config(None, UNET)
    data = load("shapes", **cfg.data.options)
    with jax.enable_x64(False):
        trainer = Trainer(cfg, data)
        state = trainer.init_state()
        model = trainer.model(state.params)
        assert isinstance(model, rn.UNet) and model.levels == 2 and model.long_skips
        # The loss is the mean per-pixel cross-entropy; the accuracy is per pixel.
        logits = jax.vmap(lambda x: model(x)[0])(jnp.asarray(data.x_test))
        by_hand = optax.softmax_cross_entropy_with_integer_labels(logits, data.y_test).mean()
        ev = trainer.evaluate(state.params)
        np.testing.assert_allclose(ev["test_loss"], float(by_hand), rtol=1e-5)
        acc = np.mean(np.asarray(logits).argmax(-1) == data.y_test)
        np.testing.assert_allclose(ev["test_accuracy"], acc, rtol=1e-6)
        state, metrics = trainer.train(state, 20)
        assert metrics["loss"][-1] < metrics["loss"][0]


def _pre_norm_by_hand(block, x, alpha):
    ln = lambda n, v: jax.vmap(n)(v)
    x = x + alpha * block.attention(*(ln(block.norm1, x),) * 3)
    h = ln(block.norm2, x)
    return x + alpha * jax.vmap(lambda v: block.mlp_out(jax.nn.gelu(block.mlp_in(v))))(h)


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_transformer_encoder_layers(norm):
    enc = rn.TransformerEncoder(8, 2, 3, norm=norm, alpha=0.7, key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 8))
    out, diag = enc(x)
    assert out.shape == (5, 8) and int(diag.num_fevals) == 6
    # The scan over untied layers equals calling the layers one by one.
    y = x
    for i in range(3):
        block = jax.tree_util.tree_map(lambda a, i=i: a[i] if eqx.is_array(a) else a, enc.blocks)
        y = block(y, 0.7)
        if norm == "pre" and i == 0:
            np.testing.assert_allclose(y, _pre_norm_by_hand(block, x, 0.7), rtol=1e-10)
    np.testing.assert_allclose(out, y, rtol=1e-10, atol=1e-12)
    if norm == "post":  # every token leaves a layer normalised
        np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-10)
    # alpha = 0: every sub-block is skipped (pre-norm, no norm: the identity).
    still = rn.TransformerEncoder(8, 2, 3, norm=norm, alpha=0.0, key=jax.random.PRNGKey(0))
    if norm != "post":
        np.testing.assert_allclose(still(x)[0], x, rtol=0, atol=0)


@pytest.mark.slow  # about 14 s
def test_transformer_from_a_config_learns_alpha_and_trains():
    cfg = load_config(None, [*TRANSFORMER, "model.body.learn_alpha=true", "model.norm=post"])
    data = load("retrieval", **cfg.data.options)
    with jax.enable_x64(False):
        trainer = Trainer(cfg, data)
        state = trainer.init_state()
        model = trainer.model(state.params)
        assert isinstance(model, rn.SequenceClassifier)
        assert isinstance(model.body, rn.TransformerEncoder) and model.body.num_layers == 2
        assert model.body.blocks.norm == "post"
        state, metrics = trainer.train(state, 20)
        assert metrics["loss"][-1] < metrics["loss"][0]
        assert float(trainer.model(state.params).body.alpha) != 1.0  # alpha was trained


@pytest.mark.parametrize(
    "overrides, match",
    [
        ([*UNET, "model.levels=2", "model.stem=mlp"], r"^model\.levels: only model\.stem 'unet'"),
        ([*UNET, "model.heads=2"], r"^model\.heads: only model\.stem 'transformer'"),
        ([*UNET, "model.levels=0"], r"^model\.levels: must be"),
        ([*UNET, "model.body.spectral_bound=1.0"], r"^model\.body\.spectral_method: a unet"),
        ([*TRANSFORMER, "model.norm=rms"], r"^model\.norm:"),
        ([*TRANSFORMER, "model.heads=3"], r"^model\.heads: must divide model\.width"),
        ([*TRANSFORMER, "model.body.kind=implicit", "model.body.scheme=backward_euler"],
         r"^model\.body\.kind: a transformer"),
        ([*TRANSFORMER, "model.body.tied=true"], r"^model\.body\.tied: the transformer"),
        ([*TRANSFORMER, "data.options={num_pairs: 2, seeds: 3}"], r"^data\.options\.seeds:"),
        ([*TRANSFORMER, "data.options={seed: 3}"], r"^data\.options\.seed: .*use data\.seed"),
    ],
)  # fmt: skip
def test_family_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate(load_config(None, overrides))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ([*UNET, "model.stem=conv2d", "model.levels=null"], r"^model\.stem: 'shapes' has a label "
         "per pixel"),
        (["data.name=digits", "model.stem=unet", "data.batch_size=8"], r"^model\.stem: 'unet' "
         "predicts a label per pixel"),
        ([*UNET, "model.levels=3", "data.options={size: 12, num_samples: 64}"],
         r"^model\.levels: 3 levels"),
    ],
)  # fmt: skip
def test_unet_data_errors_name_the_key(overrides, match):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=match):
        Trainer(cfg, load(cfg.data.name, **cfg.data.options))
