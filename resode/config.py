"""Typed experiment configs: a dataclass schema, safe YAML, and ``key=value`` overrides.

Built on OmegaConf structured configs. Every mistake (unknown key, wrong type, invalid choice)
raises [`ConfigError`][] with one line that names the key and what is allowed; the command line
turns it into exit status 2.
"""

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data import list_datasets
from .nn._fields import GRAPH_OPERATORS
from .nn._models import BODIES, STEMS
from .nn._ode import _ADJOINTS as ODE_ADJOINTS
from .nn._ode import _SOLVERS as ODE_SOLVERS
from .nn._spectral import SPECTRAL_METHODS
from .nn._stack import REVERSIBLE_CHOICES
from .schemes import get_scheme, list_schemes
from .solvers import ADJOINTS, SOLVERS, SPLITTINGS

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "BodyConfig",
    "TrainConfig",
    "EvalConfig",
    "ConfigError",
    "load_config",
    "load_typed",
    "save_config",
    "validate",
    "flatten",
    "to_yaml",
    "OPTIMIZERS",
    "SCHEDULES",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
"""The values `train.optimizer` accepts."""
SCHEDULES = ("constant", "cosine")
"""The values `train.schedule` accepts."""
TRAINABLE = ("all", "adapters", "head")
"""The values `train.trainable` accepts: every parameter, the residual adapters only, or the
classifier's linear head only."""
PRECISIONS = ("float32", "bfloat16")
"""The values `train.precision` accepts: the dtype of the forward and backward pass."""


class ConfigError(ValueError):
    """A config mistake; the message is one line naming the key and what is allowed."""


@dataclasses.dataclass
class DataConfig:
    """`data.*`: the dataset (a name of [`resode.data.list_datasets`][]), the batch size, the
    seed that fixes the train/test split or the generated set, and `options`: further keyword
    options of the set's maker (e.g. ``{num_samples: 20000}`` for `retrieval`, ``{size: 32}`` for
    `shapes`; see [`resode.data`][] for each set's options)."""

    name: str = "digits"
    batch_size: int = 128
    seed: int = 0  # fixes the train/test split or the generated set
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the set's own options


@dataclasses.dataclass
class BodyConfig:
    """`model.body.*`: the body kind and its options (see [`resode.nn.build_classifier`][]).

    Stacks use `scheme`, `num_steps`, `tied`, `drop_rate`, `alpha` and `learn_alpha`; residual
    stacks can be `reversible` (`momentum` with `gamma` / `learn_gamma`, `leapfrog`,
    `reversible_heun`, or `reverse`: memory flat in depth; see
    [`resode.nn.ResidualStack`][]); implicit
    stacks solve their stages with `solver` (default Newton-Krylov); a DEQ uses `solver` (default
    anderson), `adjoint`, `tol` and `max_steps`; a monotone DEQ (`monotone_deq`) uses `solver`
    (`peaceman_rachford`, the default, or `forward_backward`), its step `splitting_alpha`,
    `monotonicity` (the margin m), `tol` and `max_steps`; `spectral_bound` spectrally normalises
    the field (K-Lipschitz; MLP or conv) by `spectral_method` (`exact` or `power`); an ODE block
    `ode_solver`,
    `ode_adjoint`, `rtol` and `atol`. `hidden` is the field's hidden width (default `model.width`).
    """

    kind: str = "residual"  # none | plain | residual | implicit | deq | monotone_deq | ode
    scheme: str = "euler"
    num_steps: int = 4
    tied: bool = False
    hidden: int | None = None  # width of the field's hidden layer (default: model.width)
    zero_init: bool = False
    drop_rate: float = 0.0
    alpha: float = 1.0  # stacks: scale of the residual branch, y + alpha h f(y)
    learn_alpha: bool = False  # stacks: train alpha (a scalar parameter)
    reversible: str | None = None  # residual: momentum | leapfrog | reversible_heun | reverse
    gamma: float = 0.9  # reversible momentum: v <- gamma v + (1 - gamma) f(x)
    learn_gamma: bool = False  # reversible momentum: train gamma (kept in (0, 1))
    solver: str | None = None  # deq (default anderson); implicit stages (default newton);
    # monotone_deq: peaceman_rachford (default) | forward_backward
    monotonicity: float = 0.1  # monotone_deq: margin m, sym(I - W) >= m I
    splitting_alpha: float | None = None  # monotone_deq: splitting step (default: its own)
    spectral_bound: float | None = None  # spectral normalisation: the field is K-Lipschitz
    spectral_method: str = "exact"  # exact (SVD / Fourier symbol) | power (iteration with state)
    graph_operator: str | None = None  # graph stems: laplacian | adjacency (default: adjacency
    # for plain bodies, the GCN layer tanh((I - L) X W); laplacian otherwise, tanh(-L X W))
    adjoint: str = "implicit"
    tol: float = 1e-4
    max_steps: int = 30
    ode_solver: str = "tsit5"
    ode_adjoint: str = "recursive_checkpoint"
    rtol: float = 1e-3
    atol: float = 1e-6


@dataclasses.dataclass
class ModelConfig:
    """`model.*`: the family or stem (`mlp`, `conv1d`, `conv2d`, `graph`, `unet`,
    `transformer`), the state width, the body, and optional residual adapters (`adapter_hidden`,
    see [`resode.nn.add_adapters`][]).

    A `unet` (dense prediction, [`resode.nn.UNet`][]) takes `levels` (default 2) and
    `long_skips` (default true); its short skips are `body.kind` residual (none with plain). A
    `transformer` ([`resode.nn.TransformerEncoder`][] in a [`resode.nn.SequenceClassifier`][])
    takes `heads` (default 4), `norm` (`pre`, the default, `post` or `none`) and `readout`
    (`last`, the default, or `mean`), and `body.num_steps` layers, `body.hidden` (MLP width),
    `body.alpha` and `body.learn_alpha`. These keys are refused for other families.
    """

    stem: str = "mlp"
    width: int = 64
    body: BodyConfig = dataclasses.field(default_factory=BodyConfig)
    adapter_hidden: int | None = None  # residual adapters beside the body's field(s), this wide
    levels: int | None = None  # unet: resolutions below the input (default 2)
    long_skips: bool | None = None  # unet: encoder-decoder skips (default true)
    heads: int | None = None  # transformer: attention heads (default 4)
    norm: str | None = None  # transformer: pre | post | none (default pre)
    readout: str | None = None  # transformer: last | mean (default last)


@dataclasses.dataclass
class TrainConfig:
    """`train.*`: steps, optimiser (`adam`, `adamw`, `sgd`), learning-rate schedule (`cosine` or
    `constant` after `warmup_steps` of linear warm-up), gradient clipping, the number of steps
    compiled into one call, the checkpoint interval, and TensorBoard output."""

    steps: int = 1000
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    steps_per_call: int = 10
    checkpoint_every: int = 500
    tensorboard: bool = False  # also write TensorBoard event files to RUN_DIR/tensorboard
    precision: str = "float32"  # or bfloat16: compute in bfloat16, parameters and Adam in float32
    trainable: str = "all"  # all | adapters | head: which parameters the optimiser updates
    init_from: str | None = None  # a finished run directory: start from its final parameters


@dataclasses.dataclass
class EvalConfig:
    """`eval.every`: evaluate on the test split every this many steps (and at the end)."""

    every: int = 100


@dataclasses.dataclass
class Config:
    """A whole run: `seed`, `data`, `model`, `train`, `eval` and an optional `sweep` block.

    Made by [`load_config`][] (defaults, then a YAML file, then `key=value` overrides) and
    checked by [`validate`][].
    """

    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    sweep: dict[str, Any] | None = None  # dotted key -> list of values (used by `resode sweep`)


def _one_line(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    return f"{key}: {msg}" if key else msg


def load_typed(
    schema: type,
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    preset: dict[str, Any] | None = None,
):
    """An instance of the dataclass `schema`: its defaults, updated by the YAML file at `path` (if
    any), then by the dotted-key mapping `preset` (e.g. an experiment's ``--quick`` values), then
    by ``key=value`` overrides. Types are checked; raises [`ConfigError`][] naming the key (an
    unknown key, a wrong type, a missing or unreadable file). No range checks: see `validate`."""
    layers = [OmegaConf.structured(schema)]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist.")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # a YAML syntax error
            raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys.")
        layers.append(loaded)
    if preset:
        layers.append(
            OmegaConf.from_dotlist([f"{k}={_dotlist_value(v)}" for k, v in preset.items()])
        )
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.steps=200).")
        try:
            layers.append(OmegaConf.from_dotlist([item]))
        except Exception as exc:
            raise ConfigError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
    try:
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None


def _dotlist_value(value) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dotlist_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """The defaults, updated by the YAML file at `path` (if any), then by ``key=value`` overrides.

    YAML is read with a safe loader (data only: no tags, nothing executed). Returns a validated
    [`Config`][]; raises [`ConfigError`][] naming the key for any mistake, and for a missing or
    unreadable file.
    """
    cfg: Config = load_typed(Config, path, overrides)
    validate(cfg)
    return cfg


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{key}: {value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}."
        )


def _positive(key: str, value, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{key}: must be {'>= 0' if zero_ok else '> 0'}, got {value!r}.")


def validate(cfg: Config) -> None:
    """Check choices and ranges that types alone cannot; raises [`ConfigError`][]."""
    _choice("data.name", cfg.data.name, list_datasets())
    _positive("data.batch_size", cfg.data.batch_size)
    _data_options(cfg.data)
    _choice("model.stem", cfg.model.stem, STEMS)
    _positive("model.width", cfg.model.width)
    _family_keys(cfg.model)
    body = cfg.model.body
    _choice("model.body.kind", body.kind, BODIES)
    _choice("model.body.scheme", body.scheme, list_schemes())
    implicit = get_scheme(body.scheme).implicit
    if body.kind == "implicit" and not implicit:
        raise ConfigError(
            f"model.body.scheme: kind 'implicit' needs an implicit scheme, got {body.scheme!r}."
        )
    if body.kind in ("residual", "plain") and implicit:
        raise ConfigError(
            f"model.body.scheme: kind {body.kind!r} needs an explicit scheme, got {body.scheme!r}."
        )
    if body.kind == "plain" and body.scheme != "euler":
        raise ConfigError(
            f"model.body.scheme: kind 'plain' uses euler blocks, got {body.scheme!r}."
        )
    _positive("model.body.num_steps", body.num_steps)
    if body.hidden is not None:
        _positive("model.body.hidden", body.hidden)
    if not 0.0 <= body.drop_rate < 1.0:
        raise ConfigError(f"model.body.drop_rate: must be in [0, 1), got {body.drop_rate!r}.")
    if body.learn_alpha and body.kind not in ("plain", "residual", "implicit"):
        raise ConfigError(
            f"model.body.learn_alpha: only stacks (plain, residual, implicit) have alpha, "
            f"got kind {body.kind!r}."
        )
    if body.reversible is not None:
        _choice("model.body.reversible", body.reversible, REVERSIBLE_CHOICES)
        if body.kind != "residual":
            raise ConfigError(
                f"model.body.reversible: only kind 'residual' can be reversible, got kind "
                f"{body.kind!r}."
            )
        if body.reversible != "reverse" and body.scheme != "euler":
            raise ConfigError(
                f"model.body.scheme: reversible {body.reversible!r} replaces the scheme, which "
                f"must stay 'euler', got {body.scheme!r} (reversible 'reverse' keeps it)."
            )
    if body.reversible == "momentum" and not 0.0 < body.gamma < 1.0:
        raise ConfigError(f"model.body.gamma: must be in (0, 1), got {body.gamma!r}.")
    if body.learn_gamma and body.reversible != "momentum":
        raise ConfigError(
            f"model.body.learn_gamma: needs model.body.reversible 'momentum', got "
            f"{body.reversible!r}."
        )
    if body.kind == "monotone_deq":
        if body.solver is not None:
            _choice("model.body.solver", body.solver, tuple(SPLITTINGS))
        if body.adjoint != "implicit":
            raise ConfigError(
                f"model.body.adjoint: a monotone_deq's gradient is implicit (solved by its "
                f"splitting), got {body.adjoint!r}."
            )
        if not 0.0 < body.monotonicity <= 1.0:
            raise ConfigError(
                f"model.body.monotonicity: must be in (0, 1], got {body.monotonicity!r}."
            )
        if body.splitting_alpha is not None:
            _positive("model.body.splitting_alpha", body.splitting_alpha)
    else:
        if body.solver is not None:
            _choice("model.body.solver", body.solver, tuple(SOLVERS))
        if body.splitting_alpha is not None:
            raise ConfigError(
                f"model.body.splitting_alpha: only kind 'monotone_deq' has a splitting step, got "
                f"kind {body.kind!r}."
            )
    if body.spectral_bound is not None:
        _positive("model.body.spectral_bound", body.spectral_bound)
        if body.kind in ("none", "monotone_deq"):
            raise ConfigError(
                f"model.body.spectral_bound: kind {body.kind!r} has no field to normalise."
            )
    _choice("model.body.spectral_method", body.spectral_method, SPECTRAL_METHODS)
    if body.graph_operator is not None:
        _choice("model.body.graph_operator", body.graph_operator, GRAPH_OPERATORS)
        if cfg.model.stem != "graph":
            raise ConfigError(
                f"model.body.graph_operator: needs model.stem 'graph', got {cfg.model.stem!r}."
            )
    _choice("model.body.adjoint", body.adjoint, tuple(ADJOINTS))
    _positive("model.body.tol", body.tol)
    _positive("model.body.max_steps", body.max_steps)
    _choice("model.body.ode_solver", body.ode_solver, tuple(ODE_SOLVERS))
    _choice("model.body.ode_adjoint", body.ode_adjoint, tuple(ODE_ADJOINTS))
    _positive("model.body.rtol", body.rtol)
    _positive("model.body.atol", body.atol)
    _positive("train.steps", cfg.train.steps)
    _positive("train.lr", cfg.train.lr)
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _positive("train.weight_decay", cfg.train.weight_decay, zero_ok=True)
    _choice("train.schedule", cfg.train.schedule, SCHEDULES)
    _choice("train.precision", cfg.train.precision, PRECISIONS)
    _choice("train.trainable", cfg.train.trainable, TRAINABLE)
    if cfg.model.adapter_hidden is not None:
        _positive("model.adapter_hidden", cfg.model.adapter_hidden)
        if body.kind not in ("residual", "implicit", "deq", "ode"):
            raise ConfigError(
                f"model.adapter_hidden: adapters sit beside a residual field (body kinds residual, "
                f"implicit, deq, ode), not kind {body.kind!r}."
            )
    if cfg.train.trainable == "adapters" and cfg.model.adapter_hidden is None:
        raise ConfigError(
            "train.trainable: 'adapters' needs model.adapter_hidden (the adapters' width)."
        )
    _positive("train.warmup_steps", cfg.train.warmup_steps, zero_ok=True)
    if cfg.train.grad_clip is not None:
        _positive("train.grad_clip", cfg.train.grad_clip)
    _positive("train.steps_per_call", cfg.train.steps_per_call)
    _positive("train.checkpoint_every", cfg.train.checkpoint_every)
    _positive("eval.every", cfg.eval.every)
    if cfg.sweep is not None:
        from .sweep import expand_sweep  # (imports this module)

        expand_sweep(cfg.sweep)


def _data_options(data: DataConfig) -> None:
    """`data.options` must name options of the set's maker (not its seed: `data.seed`)."""
    import inspect

    from .data import DATASETS

    if not data.options or data.name not in DATASETS:
        return
    accepted = [p for p in inspect.signature(DATASETS[data.name]).parameters if p != "seed"]
    for key in data.options:
        if key not in accepted:
            hint = "use data.seed" if key == "seed" else f"its options: {', '.join(accepted)}"
            raise ConfigError(f"data.options.{key}: {data.name!r} has no such option; {hint}.")


_FAMILY_KEYS = {"levels": "unet", "long_skips": "unet", "heads": "transformer",
                "norm": "transformer", "readout": "transformer"}  # fmt: skip


def _family_keys(model: ModelConfig) -> None:
    """The keys of the unet and transformer families: range checks, and refused elsewhere."""
    from .nn._transformer import NORMS

    for key, family in _FAMILY_KEYS.items():
        if getattr(model, key) is not None and model.stem != family:
            raise ConfigError(
                f"model.{key}: only model.stem {family!r} has it, got stem {model.stem!r}."
            )
    if model.levels is not None:
        _positive("model.levels", model.levels)
    if model.heads is not None:
        _positive("model.heads", model.heads)
        if model.width % model.heads:
            raise ConfigError(
                f"model.heads: must divide model.width ({model.width}), got {model.heads}."
            )
    elif model.stem == "transformer" and model.width % 4:
        raise ConfigError(
            f"model.heads: the default 4 heads must divide model.width, got width {model.width}."
        )
    if model.norm is not None:
        _choice("model.norm", model.norm, NORMS)
    if model.readout is not None:
        _choice("model.readout", model.readout, ("last", "mean"))
    body = model.body
    if model.stem == "transformer":
        if body.kind != "residual":
            raise ConfigError(
                f"model.body.kind: a transformer is a residual stack ('residual'), got "
                f"{body.kind!r}."
            )
        for key, value, default in (
            ("scheme", body.scheme, "euler"),
            ("tied", body.tied, False),
            ("drop_rate", body.drop_rate, 0.0),
            ("reversible", body.reversible, None),
            ("zero_init", body.zero_init, False),
            ("spectral_bound", body.spectral_bound, None),
        ):
            if value != default:
                raise ConfigError(
                    f"model.body.{key}: the transformer family has no {key} (keep {default!r}), "
                    f"got {value!r}."
                )
    if model.stem == "unet" and body.spectral_bound is not None and body.spectral_method != "power":
        raise ConfigError(
            "model.body.spectral_method: a unet normalises its fields by power iteration only "
            f"('power'), got {body.spectral_method!r}."
        )
    if model.stem in ("unet", "transformer") and model.adapter_hidden is not None:
        raise ConfigError(
            f"model.adapter_hidden: adapters are not available for model.stem {model.stem!r}."
        )


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict (e.g. ``dataclasses.asdict(cfg)``) as ``{dotted key: value}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what a run directory's ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config to `path` (atomically: a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
