"""The jit-compiled training loop: optax, device-resident data, `lax.scan` over steps, sharding.

A [`Trainer`][] owns one model structure, one optimiser and one dataset placed on the devices.
Its training call runs `length` steps in one compiled `lax.scan` (batches drawn on the device by
[`resode.data.batch_indices`][], so nothing crosses the host between steps) and donates the train
state, so parameters and optimiser state are updated in place. Each distinct `length` is compiled
once, ahead of time, and reused: a second call never recompiles.

Data parallelism: with several local devices the batch is sharded along a one-axis mesh
(``"data"``) and parameters, optimiser state and the (small) datasets are replicated; XLA inserts
the gradient all-reduce. The same code runs on one CPU, one GPU or all of them.
"""

import dataclasses
import math
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray

from ..config import Config, ConfigError, flatten, load_config
from ..data import Dataset, batch_indices
from ..nn import (
    adapter_mask,
    add_adapters,
    buffer_mask,
    build_classifier,
    update_spectral_state,
)
from ..nn._spectral import spectral_fields

TASKS = ("classification", "regression")


class TrainState(eqx.Module):
    """Everything a training step changes, and everything a checkpoint must hold.

    `params` are the model's floating-point arrays (the rest of the model is static), `opt_state`
    the optax state, `step` the number of steps taken (it also fixes the data position: batch s is
    a function of `data_key` and s), `data_key` the key of the batch order and `dropout_key` the
    key folded with the step for stochastic depth.
    """

    params: Any
    opt_state: Any
    step: Array
    data_key: Array
    dropout_key: Array


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The optax transformation of ``cfg.train``: clipping, then adam / adamw / sgd (momentum)
    with a learning rate that warms up linearly for `warmup_steps` and then stays constant or
    decays along a cosine to 0 at `steps`."""
    t = cfg.train
    if t.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0 if t.warmup_steps else t.lr, t.lr, t.warmup_steps, max(t.steps, t.warmup_steps + 1)
        )
    elif t.warmup_steps:
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, t.lr, t.warmup_steps), optax.constant_schedule(t.lr)],
            [t.warmup_steps],
        )
    else:
        lr = t.lr
    if t.optimizer == "adam":
        opt = optax.adam(lr)
    elif t.optimizer == "adamw":
        opt = optax.adamw(lr, weight_decay=t.weight_decay)
    else:
        opt = optax.sgd(lr, momentum=t.momentum or None)
    if t.grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
    return opt


def check_dataset(cfg: Config, data: Dataset, num_devices: int, *, own_model: bool = False) -> None:
    """Config choices that depend on the data and the devices; raises `ConfigError`.

    `own_model`: the model is given (not built from ``cfg.model``), so its keys are not checked.
    """
    if data.task not in TASKS:
        raise ConfigError(
            f"data.name: {data.name!r} is a {data.task} set (trajectories); `resode run` trains "
            f"classifiers and regressors, choose a set of task {' or '.join(TASKS)}."
        )
    n = data.x_train.shape[0]
    if not 0 < cfg.data.batch_size <= n:
        raise ConfigError(
            f"data.batch_size: must be in [1, {n}] (the training examples of {data.name!r}), "
            f"got {cfg.data.batch_size}."
        )
    if cfg.data.batch_size % num_devices:
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size} must be divisible by the number of devices "
            f"({num_devices}) to shard the batch."
        )
    graph_data = data.adjacency is not None
    if not own_model and graph_data != (cfg.model.stem == "graph"):
        raise ConfigError(
            f"model.stem: {data.name!r} is a graph (node classification), which needs "
            f"model.stem=graph, got {cfg.model.stem!r}."
            if graph_data
            else f"model.stem: 'graph' needs a graph data set (sbm, karate); {data.name!r} is not."
        )
    if not own_model and graph_data and cfg.model.body.kind == "monotone_deq":
        raise ConfigError("model.body.kind: 'monotone_deq' has no graph form; use deq.")
    dense = data.task == "classification" and data.y_train.ndim > 1 and not graph_data
    if not own_model and dense != (cfg.model.stem == "unet"):
        raise ConfigError(
            f"model.stem: {data.name!r} has a label per pixel (dense prediction), which needs "
            f"model.stem=unet, got {cfg.model.stem!r}."
            if dense
            else f"model.stem: 'unet' predicts a label per pixel; {data.name!r} has one label "
            "per example (use a dense set: shapes)."
        )
    if not own_model and cfg.model.stem == "unet":
        levels = 2 if cfg.model.levels is None else cfg.model.levels
        if any(n % 2**levels for n in data.input_shape[1:]):
            raise ConfigError(
                f"model.levels: {levels} levels halve the image {levels} times, so its sides "
                f"{data.input_shape[1:]} must be divisible by {2**levels}."
            )
    stem_dims = {"mlp": None, "conv1d": 2, "conv2d": 3, "graph": 2, "unet": 3, "transformer": 2}[
        cfg.model.stem
    ]
    if not own_model and stem_dims is not None and len(data.input_shape) != stem_dims:
        raise ConfigError(
            f"model.stem: {cfg.model.stem!r} needs inputs of {stem_dims} axes (channels first); "
            f"{data.name!r} inputs have shape {data.input_shape}. Use model.stem=mlp."
        )


def seed_keys(seed: int) -> tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray]:
    """The keys a run derives from its seed: (model initialisation, batch order, stochastic
    depth)."""
    model_key, data_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    return model_key, data_key, dropout_key


def build_model(cfg: Config, data: Dataset, key: PRNGKeyArray | None = None):
    """The classifier (or regressor) that ``cfg.model`` describes, for the inputs of `data`,
    initialised from `key` (default: the model key of ``cfg.seed``, as a [`Trainer`][] does)."""
    if key is None:
        key = seed_keys(cfg.seed)[0]
    body = cfg.model.body
    if data.task == "classification":
        out = data.num_classes
    else:
        out = int(np.prod(data.y_train.shape[1:]))
    return build_classifier(
        in_shape=data.input_shape,
        num_classes=out,
        stem=cfg.model.stem,
        width=cfg.model.width,
        hidden=body.hidden,
        body=body.kind,
        scheme=body.scheme,
        num_steps=body.num_steps,
        tied=body.tied,
        solver=body.solver,
        adjoint=body.adjoint,
        tol=body.tol,
        max_steps=body.max_steps,
        ode_solver=body.ode_solver,
        ode_adjoint=body.ode_adjoint,
        root=body.solver,
        rtol=body.rtol,
        atol=body.atol,
        zero_init=body.zero_init,
        drop_rate=body.drop_rate,
        alpha=body.alpha,
        learn_alpha=body.learn_alpha,
        reversible=body.reversible,
        gamma=body.gamma,
        learn_gamma=body.learn_gamma,
        monotonicity=body.monotonicity,
        splitting_alpha=body.splitting_alpha,
        spectral_bound=body.spectral_bound,
        spectral_method=body.spectral_method,
        adjacency=data.adjacency,
        graph_operator=body.graph_operator,
        levels=2 if cfg.model.levels is None else cfg.model.levels,
        long_skips=True if cfg.model.long_skips is None else cfg.model.long_skips,
        num_heads=4 if cfg.model.heads is None else cfg.model.heads,
        norm=cfg.model.norm or "pre",
        readout=cfg.model.readout or "last",
        key=key,
    )


def _masked(opt, model, params, trainable: str):
    """`opt` on the parameters `trainable` names (all, adapters, head); zero updates (and no
    optimiser state) for the others."""
    state = buffer_mask(model)  # power-iteration vectors, graph Laplacians: never optimised
    has_state = any(jax.tree_util.tree_leaves(state))
    if trainable == "all" and not has_state:
        return opt
    if trainable == "all":
        mask = jax.tree_util.tree_map(lambda _: True, model)
    elif trainable == "adapters":
        mask = adapter_mask(model)
    else:  # the classifier's linear head
        mask = jax.tree_util.tree_map(lambda _: False, model)
        mask = eqx.tree_at(
            lambda m: m.head, mask, replace_fn=lambda h: jax.tree_util.tree_map(lambda _: True, h)
        )
    leaves, treedef = jax.tree_util.tree_flatten(model)
    flags = treedef.flatten_up_to(mask)
    frozen = treedef.flatten_up_to(state)
    labels = [
        "train" if flag and not fixed else "freeze"
        for leaf, flag, fixed in zip(leaves, flags, frozen, strict=True)
        if eqx.is_inexact_array(leaf)
    ]
    labels = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), labels)
    # (A function returning the labels: the labels tree is itself a callable module, which optax
    # would otherwise call on the parameters.)
    return optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, lambda _: labels)


def _load_base(cfg: Config, data: Dataset, like_model):
    """The model of `like_model`'s structure with the final parameters of the run directory
    ``cfg.train.init_from`` (its own config rebuilds the checkpoint's structure)."""
    from ._checkpoint import load_checkpoint

    run_dir = Path(cfg.train.init_from)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"train.init_from: {str(run_dir)!r} is not a run directory (no config.yaml)."
        )
    base_cfg = load_config(run_dir / "config.yaml")
    base_cfg.train.init_from = None
    old, new = (
        flatten(dataclasses.asdict(dataclasses.replace(c.model, adapter_hidden=None)), "model.")
        for c in (base_cfg, cfg)
    )
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differ:
        k = differ[0]
        raise ConfigError(
            f"train.init_from: {k} is {old.get(k)!r} in the run {str(run_dir)!r} and "
            f"{new.get(k)!r} here; an adapted run starts from the same model."
        )
    base = Trainer(base_cfg, data)
    try:
        state, _ = load_checkpoint(run_dir, _host(base.init_state()))
    except FileNotFoundError:
        raise ConfigError(f"train.init_from: {str(run_dir)!r} has no checkpoint.") from None
    loaded = base.model(state.params)
    shapes = lambda m: jax.tree_util.tree_map(
        lambda x: (x.shape, x.dtype), eqx.filter(m, eqx.is_inexact_array)
    )
    if jax.tree_util.tree_structure(loaded) != jax.tree_util.tree_structure(like_model) or shapes(
        loaded
    ) != shapes(like_model):
        raise ConfigError(
            f"train.init_from: the model of {str(run_dir)!r} (model.* of its config.yaml) differs "
            "from this config's model; an adapted run starts from the same architecture."
        )
    return loaded


def _cast_floats(tree, dtype):
    """Every floating-point array leaf of `tree` cast to `dtype` (integers, keys untouched)."""

    def cast(x):
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)


def _put(x: np.ndarray, sharding: NamedSharding) -> Array:
    """A host array as a global array with `sharding` (works with one or several processes)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _host(tree):
    """A replicated pytree as NumPy arrays, from the first local copy (so it also works when the
    arrays span several processes, where `jax.device_get` would refuse)."""

    def get(x):
        return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x

    return jax.tree_util.tree_map(get, tree)


class Trainer:
    """Compiled training and evaluation of one config on one dataset, over all local devices.

    **Arguments:** `cfg` (a validated [`Config`][]), `data` (a classification or regression
    [`Dataset`][]), `devices` (default: `jax.devices()`), `model` (optional, keyword-only: train
    this equinox module instead of the one ``cfg.model`` describes; it is called on one example as
    ``model(x, key=k, inference=b) -> (output, Diagnostics)``, as [`resode.nn.Classifier`][] and
    [`resode.nn.ResidualStack`][] are; ``cfg.model`` is then ignored).

    **Methods:** `init_state()`, `train(state, length) -> (state, metrics)` (metrics: a dict of
    NumPy arrays with one entry per step), `evaluate(params) -> dict`, `model(params)`,
    `memory_bytes(length=None)` (peak temporary memory of a compiled call, from XLA).
    """

    def __init__(self, cfg: Config, data: Dataset, devices=None, *, model=None):
        self.cfg = cfg
        self.data = data
        devices = list(jax.devices() if devices is None else devices)
        check_dataset(cfg, data, len(devices), own_model=model is not None)
        self.mesh = Mesh(np.array(devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.num_devices = len(devices)
        self.classification = data.task == "classification"
        self._model_key, self._data_key, self._dropout_key = seed_keys(cfg.seed)
        if model is None:
            model = build_model(cfg, data, self._model_key)
            if cfg.train.init_from is not None:
                model = _load_base(cfg, data, model)
            if cfg.model.adapter_hidden is not None:
                akey = jax.random.fold_in(self._model_key, 1)
                model = add_adapters(model, cfg.model.adapter_hidden, key=akey)
        self.params0, self.static = eqx.partition(model, eqx.is_inexact_array)
        self.optimizer = _masked(make_optimizer(cfg), model, self.params0, cfg.train.trainable)
        self.spectral_state = bool(spectral_fields(model))
        self.uses_dropout = cfg.model.body.drop_rate > 0
        self.compute_dtype = jnp.dtype(cfg.train.precision)
        # Device-resident data: replicated (small embedded sets); the test set padded to whole
        # evaluation batches with a mask.
        self.x_train = _put(data.x_train, self.replicated)
        self.y_train = _put(data.y_train, self.replicated)
        n_test = data.x_test.shape[0]
        per = self.num_devices
        self.eval_batch = min(1024, math.ceil(n_test / per) * per)

        self._splits = {"test": self._batched(data.x_test, data.y_test)}
        self.x_test, self.y_test, self.test_mask = self._splits["test"]
        self._compiled: dict[int, Any] = {}
        self._eval = None

    def _batched(self, x: np.ndarray, y: np.ndarray):
        """`x`, `y` and a mask as whole evaluation batches: leading axes (batches, eval_batch)."""
        n = x.shape[0]
        num_batches = math.ceil(n / self.eval_batch)
        pad = num_batches * self.eval_batch - n

        def batched(a):
            a = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])
            return _put(a.reshape(num_batches, self.eval_batch, *a.shape[1:]), self.replicated)

        return batched(x), batched(y), batched(np.ones(n, np.float32))

    # -- state -----------------------------------------------------------------------------

    def init_state(self, params=None, *, seed: int | None = None) -> TrainState:
        """Step 0: the initial parameters and optimiser state, replicated over the devices.

        `params` (default: the model's own) start from other parameters of the same structure,
        e.g. ``eqx.filter(other_model, eqx.is_inexact_array)``; `seed` (default ``cfg.seed``)
        fixes the batch order and stochastic depth. With both, one `Trainer` (and its compiled
        calls) serves several seeds of the same model structure.
        """
        params = self.params0 if params is None else params
        data_key, dropout_key = self._data_key, self._dropout_key
        if seed is not None:
            _, data_key, dropout_key = seed_keys(seed)
        state = TrainState(
            params=params,
            opt_state=self.optimizer.init(params),
            step=jnp.array(0, jnp.int32),
            data_key=data_key,
            dropout_key=dropout_key,
        )
        return self.place(state)

    def place(self, state: TrainState) -> TrainState:
        """`state` (e.g. read from a checkpoint) replicated over the devices."""
        return jax.tree_util.tree_map(
            lambda x: _put(np.asarray(x), self.replicated) if eqx.is_array(x) else x, state
        )

    def model(self, params):
        """The model with parameters `params`."""
        return eqx.combine(params, self.static)

    # -- the compiled functions ------------------------------------------------------------

    def _shard(self, x):
        if self.num_devices == 1:
            return x
        return jax.lax.with_sharding_constraint(x, self.batch_sharding)

    def _forward(self, params, x, y, mask, key, inference):
        if self.compute_dtype != jnp.float32:
            # Mixed precision: the float32 master parameters and the inputs are cast to the
            # compute dtype, the outputs back to float32 for the loss; the gradient of the cast
            # is a cast, so the gradient arrives in float32 for the float32 optimiser.
            params, x = _cast_floats((params, x), self.compute_dtype)
        model = self.model(params)
        if key is None:
            out, diag = jax.vmap(lambda xi: model(xi, inference=inference))(x)
        else:
            keys = jax.random.split(key, x.shape[0])
            out, diag = jax.vmap(lambda xi, ki: model(xi, key=ki, inference=inference))(x, keys)
        out = out.astype(jnp.float32)
        if self.classification and y.ndim > 1:
            # One label per node (or position); -1 marks positions outside the split. Per example:
            # the mean loss and the fraction correct over its labelled positions.
            valid = (y >= 0).astype(jnp.float32)
            per = optax.softmax_cross_entropy_with_integer_labels(out, jnp.maximum(y, 0))
            axes = tuple(range(1, y.ndim))
            count = jnp.maximum(jnp.sum(valid, axis=axes), 1.0)
            losses = jnp.sum(per * valid, axis=axes) / count
            hits = (jnp.argmax(out, axis=-1) == y).astype(jnp.float32) * valid
            correct = jnp.sum(hits, axis=axes) / count
        elif self.classification:
            losses = optax.softmax_cross_entropy_with_integer_labels(out, y)
            correct = (jnp.argmax(out, axis=-1) == y).astype(jnp.float32)
        else:
            losses = jnp.mean(jnp.square(out.reshape(y.shape) - y).reshape(y.shape[0], -1), -1)
            correct = jnp.zeros_like(losses)
        return losses * mask, correct * mask, diag

    def _loss(self, params, x, y, key):
        losses, correct, diag = self._forward(params, x, y, 1.0, key, inference=False)
        return jnp.mean(losses), (jnp.mean(correct), diag)

    def _step(self, state: TrainState, data):
        x_all, y_all = data
        idx = batch_indices(state.data_key, state.step, x_all.shape[0], self.cfg.data.batch_size)
        x, y = self._shard(x_all[idx]), self._shard(y_all[idx])
        key = jax.random.fold_in(state.dropout_key, state.step) if self.uses_dropout else None
        (loss, (acc, diag)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state.params, x, y, key
        )
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = eqx.apply_updates(state.params, updates)
        if self.spectral_state:  # power-iteration vectors follow the new weights
            params = eqx.filter(update_spectral_state(self.model(params)), eqx.is_inexact_array)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **diag.summary()}
        if self.classification:
            metrics["accuracy"] = acc
        new = TrainState(params, opt_state, state.step + 1, state.data_key, state.dropout_key)
        return new, metrics

    def _train_fn(self, state: TrainState, data, length: int):
        return jax.lax.scan(lambda s, _: self._step(s, data), state, None, length=length)

    def compiled(self, state: TrainState, length: int):
        """The compiled call of `length` steps (compiled on first use, then reused)."""
        if length not in self._compiled:
            fn = jax.jit(self._train_fn, static_argnums=2, donate_argnums=0)
            self._compiled[length] = fn.lower(state, (self.x_train, self.y_train), length).compile()
        return self._compiled[length]

    def train(self, state: TrainState, length: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        """Run `length` training steps from `state` (donated: do not reuse it).

        Returns the new state and the per-step metrics (`loss`, `accuracy` for classification,
        `grad_norm`, and the body's diagnostics: `num_fevals`, `num_jvps`, `solver_steps`,
        `residual`, `fraction_converged`), fetched to the host.
        """
        state, metrics = self.compiled(state, length)(state, (self.x_train, self.y_train))
        return state, _host(metrics)

    def memory_bytes(self, length: int | None = None) -> int | None:
        """XLA's peak temporary memory of the compiled `length`-step call (default: the longest
        call compiled so far); None when that call has not been compiled."""
        if length is None:
            length = max(self._compiled, default=None)
        if length not in self._compiled:
            return None
        analysis = self._compiled[length].memory_analysis()
        return None if analysis is None else int(analysis.temp_size_in_bytes)

    def _eval_fn(self, params, xs, ys, masks):
        def batch(carry, inputs):
            x, y, mask = (self._shard(a) for a in inputs)
            losses, correct, diag = self._forward(params, x, y, mask, None, inference=True)
            summed = {
                "loss": jnp.sum(losses),
                "correct": jnp.sum(correct),
                "num_fevals": jnp.sum(diag.num_fevals * mask),
                "solver_steps": jnp.sum(diag.solver_steps * mask),
                "residual": jnp.max(diag.residual),
                "converged": jnp.sum(diag.converged * mask),
            }
            summed = {k: v.astype(jnp.float32) for k, v in summed.items()}
            carry = {
                k: jnp.maximum(carry[k], v) if k == "residual" else carry[k] + v
                for k, v in summed.items()
            }
            return carry, None

        zero = jnp.zeros((), jnp.float32)
        init = {k: zero for k in ("loss", "correct", "num_fevals", "solver_steps", "converged")}
        init["residual"] = zero
        totals, _ = jax.lax.scan(batch, init, (xs, ys, masks))
        return totals

    def evaluate(self, params, split: str = "test") -> dict[str, float]:
        """Loss, accuracy (classification) and mean diagnostics in evaluation mode, on the test
        set (default) or the training set (``split="train"``); keys are prefixed by the split
        (``test_loss``, ``test_accuracy`` (None for regression), ``test_num_fevals``,
        ``test_solver_steps``, ``test_residual`` (the largest), ``test_fraction_converged``)."""
        if split not in ("test", "train"):
            raise ValueError(f"Trainer.evaluate: `split` must be 'test' or 'train', got {split!r}.")
        if split not in self._splits:
            self._splits[split] = self._batched(self.data.x_train, self.data.y_train)
        if self._eval is None:
            self._eval = jax.jit(self._eval_fn)
        totals = _host(self._eval(params, *self._splits[split]))
        n = (self.data.x_test if split == "test" else self.data.x_train).shape[0]
        p = split + "_"
        out = {p + "loss": float(totals["loss"]) / n}
        out[p + "accuracy"] = float(totals["correct"]) / n if self.classification else None
        out[p + "num_fevals"] = float(totals["num_fevals"]) / n
        out[p + "solver_steps"] = float(totals["solver_steps"]) / n
        out[p + "residual"] = float(totals["residual"])
        out[p + "fraction_converged"] = float(totals["converged"]) / n
        return out


__all__ = [
    "TrainState",
    "Trainer",
    "build_model",
    "check_dataset",
    "make_optimizer",
]
