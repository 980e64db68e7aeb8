"""Check records, seeds and spreads: the vocabulary every experiment reports in."""

import dataclasses
import math
from typing import Any

import numpy as np

KINDS = ("exact", "empirical")
COMPARISONS = ("equal", "le", "ge")


@dataclasses.dataclass
class Check:
    """One claim, what was expected, what was measured, and whether it held.

    **Fields:**

    - `name`: a short identifier (``identity_error``).
    - `kind`: ``"exact"`` (an identity or bound that holds for any parameters; expected value
      computed from the run's own parameters; failure is a bug) or ``"empirical"`` (a claim from the
      chapters measured over seeds; failure is a finding).
    - `claim`: the claim in words.
    - `expected`, `measured`, `tolerance`: numbers (or short lists / strings for empirical
      claims); `tolerance` is None where it does not apply.
    - `holds`: whether the claim held in this run.
    - `detail`: optional text, e.g. the per-seed values.
    """

    name: str
    kind: str
    claim: str
    expected: Any
    measured: Any
    tolerance: Any
    holds: bool
    detail: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"Check {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}."
            )
        self.holds = bool(self.holds)

    def as_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))


def exact_check(
    name: str,
    claim: str,
    *,
    measured: float,
    expected: float,
    tolerance: float,
    compare: str = "equal",
    detail: str = "",
) -> Check:
    """An exact check: ``|measured - expected| <= tolerance`` (``compare="equal"``), ``measured
    <= expected + tolerance`` (``"le"``, an upper bound) or ``measured >= expected - tolerance``
    (``"ge"``, a lower bound). A non-finite measurement never holds."""
    if compare not in COMPARISONS:
        raise ValueError(f"exact_check: compare must be one of {COMPARISONS}, got {compare!r}.")
    m, e, tol = float(measured), float(expected), float(tolerance)
    if not math.isfinite(m):
        holds = False
    elif compare == "equal":
        holds = abs(m - e) <= tol
    elif compare == "le":
        holds = m <= e + tol
    else:
        holds = m >= e - tol
    return Check(name, "exact", claim, e, m, tol, holds, detail)


def empirical_check(
    name: str,
    claim: str,
    *,
    measured: Any,
    expected: Any,
    holds: bool,
    tolerance: Any = None,
    detail: str = "",
) -> Check:
    """An empirical check: `holds` is what this run found (decided by a criterion fixed before the
    run, stated in `expected`), never tuned until it passes."""
    return Check(name, "empirical", claim, expected, measured, tolerance, holds, detail)


def seed_list(seed: int, num_seeds: int) -> list[int]:
    """The seeds of a run: ``seed, seed + 1, ..., seed + num_seeds - 1`` (none dropped)."""
    return [int(seed) + i for i in range(int(num_seeds))]


def spread(values) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), min, max and count of `values`
    (non-finite values are kept: they make the mean non-finite, as they should)."""
    v = np.asarray(list(values), dtype=np.float64)
    return {
        "mean": float(np.mean(v)),
        "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0,
        "min": float(np.min(v)),
        "max": float(np.max(v)),
        "n": int(v.size),
        "values": [float(x) for x in v],
    }


def fmt_spread(s: dict[str, Any], spec: str = ".3f") -> str:
    """``mean ± std (n=…)``."""
    return f"{format(s['mean'], spec)} ± {format(s['std'], spec)} (n={s['n']})"


def jsonable(value):
    """`value` with NumPy scalars and arrays as Python numbers and lists, non-finite floats as
    None (JSON has no NaN), tuples as lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype")):
        return jsonable(np.asarray(value).tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def to_float64(tree):
    """`tree` (e.g. a trained model) with every floating-point array cast to float64 (complex to
    complex128), for exact checks; call it where x64 is enabled (``with jax.enable_x64(True)``)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    def cast(a):
        if not eqx.is_inexact_array(a):
            return a
        return a.astype(jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64)

    return jax.tree_util.tree_map(cast, tree)


def fit_config(steps: int, lr: float, *overrides: str):
    """The [`resode.config.Config`][] of an in-memory training ([`resode.train.fit`][]) of `steps`
    steps at learning rate `lr`, evaluated once at the end, with further ``key=value``
    `overrides` (e.g. ``"train.steps_per_call=100"``, ``"seed=3"``)."""
    from ..config import load_config

    return load_config(
        None, [f"train.steps={steps}", f"train.lr={lr}", f"eval.every={steps}", *overrides]
    )


def fit_seeds(
    data,
    seeds,
    steps: int,
    lr: float,
    *overrides: str,
    evaluate: bool = True,
    evaluate_train: bool = False,
):
    """Train one model per seed on `data` ([`resode.train.fit`][], configs from
    [`fit_config`][] with ``seed=s`` and `overrides`), sharing one compiled
    [`resode.train.Trainer`][]. Returns the list of `FitResult`s, in the order of `seeds`.
    `evaluate` and `evaluate_train` are passed on to `fit` (``evaluate=False``: no test-split
    evaluation, for an experiment that measures the models itself)."""
    from ..train import Trainer, build_model, fit

    results, trainer = [], None
    for s in seeds:
        c = fit_config(steps, lr, f"seed={s}", *overrides)
        if trainer is None:
            trainer = Trainer(c, data)
        model = build_model(c, data)
        results.append(
            fit(
                c,
                data,
                model=model,
                trainer=trainer,
                evaluate=evaluate,
                evaluate_train=evaluate_train,
            )
        )
    return results


def held_out_accuracy(model, data) -> float:
    """Accuracy of a classifier on ``data.x_test`` / ``data.y_test`` (evaluation mode, one
    compiled batched call)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    logits = jax.jit(jax.vmap(lambda x: model(x, inference=True)[0]))(jnp.asarray(data.x_test))
    return float(np.mean(np.asarray(logits).argmax(1) == np.asarray(data.y_test)))


def max_param_change(a, b) -> float:
    """The largest absolute difference between corresponding parameters of two models of the same
    structure (0.0 exactly when every parameter is bit for bit the same)."""
    import equinox as eqx
    import jax
    import numpy as np

    pa = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_inexact_array))
    pb = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_inexact_array))
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(pa, pb, strict=True)
    )


def require_subset(cfg, key: str, allowed, *, must_include: tuple[str, ...] = ()) -> None:
    """Raise `ConfigError` naming `key` unless ``cfg.<key>`` is a non-empty list of distinct
    names from `allowed` that contains every name of `must_include` (an experiment's choice of
    variants or models to run)."""
    from ..config import ConfigError

    value, allowed = getattr(cfg, key), list(allowed)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: must be a non-empty list of {allowed}, got {value!r}.")
    for name in value:
        if name not in allowed:
            raise ConfigError(f"{key}: unknown name {name!r}; choose from {allowed}.")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key}: each name at most once, got {value}.")
    for name in must_include:
        if name not in value:
            raise ConfigError(f"{key}: must include {name!r}, got {value}.")


def require_at_least_one(cfg, *keys: str) -> None:
    """Raise `ConfigError` naming the first of `keys` whose value in `cfg` is below 1 (counts,
    sizes, steps of an experiment's config)."""
    from ..config import ConfigError

    for key in keys:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")
