"""ResidualStack: num_steps steps of any scheme over a field, tied or untied, one lax.scan."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ..schemes import Scheme, get_scheme
from ..solvers import AbstractFixedPointSolver
from ..stepping import integrate
from ..stepping._reversible import (
    AbstractReversibleMethod,
    Momentum,
    ReverseStep,
    resolve_method,
    reversible_integrate,
)
from ..stepping._rk import resolve_root
from ._diagnostics import Diagnostics
from ._fields import AbstractVectorField

REVERSIBLE_CHOICES = ("momentum", "leapfrog", "reversible_heun", "reverse")
"""Names of `ResidualStack(reversible=...)` (and `model.body.reversible` of a config)."""


class ResidualStack(eqx.Module):
    r"""`num_steps` residual steps ``y <- step(y)`` of `scheme` over a field (h = t1 / num_steps).

    - ``tied=False`` (default): one field per step, built with `eqx.filter_vmap` and run by one
      `lax.scan` (`resode.integrate(per_step_args=True)`): with ``scheme="euler"`` this is a
      classic ResNet, ``y + h f_k(y)``. Compile time does not grow with depth.
    - ``tied=True``: one field for every step: a fixed-step neural ODE.
    - Implicit schemes (e.g. ``"backward_euler"``: ``y_next = y + h f(y_next)``) solve each step
      with `root` and are differentiated implicitly.
    - ``skip=False``: the same blocks without the skip connection, ``y <- alpha f_k(y)`` (a
      "plain" network, for degradation studies; Euler only).

    **Arguments:**

    - `make_field`: ``key -> AbstractVectorField``; called once (tied) or vmapped over
      `num_steps` keys (untied), so every step has the same structure and initialisation law.
    - `num_steps`, `scheme`, `t1` (default 1), `root` (stage solver of implicit schemes).
    - `alpha`: scale of the residual branch, ``f -> alpha f`` (default 1); learnable with
      ``learn_alpha=True``.
    - `drop_rate`: stochastic depth. Step k (0-based) survives with probability
      ``1 - drop_rate (k + 1) / num_steps`` at training time (needs `key`) and is scaled by that
      probability at evaluation (``inference=True``): for Euler this is the exact expectation.
    - `checkpoint`: `jax.checkpoint` each step (less memory for about one more forward pass).
    - `augment`: number of zero channels appended along axis 0 of the state (augmented neural
      ODEs); the field must be built for the augmented size, and the output keeps them.
    - `reversible`: run the stack as a reversible scheme whose backward pass rebuilds the states
      instead of storing them (reverse-mode memory flat in depth; see
      [`resode.reversible_integrate`][]): ``"momentum"`` (a momentum ResNet with momentum
      `gamma`, trainable with ``learn_gamma=True``), ``"leapfrog"``, ``"reversible_heun"``
      (exact; they replace `scheme`, which must stay ``"euler"``), ``"reverse"`` (the stack's own
      explicit `scheme` rebuilt approximately by steps of -h), or an
      [`resode.AbstractReversibleMethod`][] object. `None` (default): ordinary stepping.
    - `gamma`, `learn_gamma`: the momentum of ``reversible="momentum"`` (in (0, 1); learned
      through a sigmoid, so it stays there).
    - `key`: keyword-only.

    Call as ``stack(y, args=None, *, key=None, inference=False, probe=None) -> (y_out,
    Diagnostics)`` on one example (vmap over a batch); `args` is injected into every field call;
    `probe` ([`resode.backward_probe`][]) observes the implicit stages' backward solves.
    """

    field: AbstractVectorField
    alpha: float | Array
    num_steps: int = eqx.field(static=True)
    scheme: Scheme = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    tied: bool = eqx.field(static=True)
    skip: bool = eqx.field(static=True)
    drop_rate: float = eqx.field(static=True)
    checkpoint: bool = eqx.field(static=True)
    augment: int = eqx.field(static=True)
    root: AbstractFixedPointSolver | None = eqx.field(static=True)
    reversible: AbstractReversibleMethod | None
    gamma_logit: Array | None

    def __init__(
        self,
        make_field: Callable[[PRNGKeyArray], AbstractVectorField],
        num_steps: int,
        *,
        scheme="euler",
        tied: bool = False,
        skip: bool = True,
        t1: float = 1.0,
        alpha: float = 1.0,
        learn_alpha: bool = False,
        drop_rate: float = 0.0,
        checkpoint: bool = False,
        augment: int = 0,
        root=None,
        reversible=None,
        gamma: float = 0.9,
        learn_gamma: bool = False,
        key: PRNGKeyArray,
    ):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(
                f"ResidualStack: `num_steps` must be a positive int, got {num_steps!r}."
            )
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"ResidualStack: `drop_rate` must be in [0, 1), got {drop_rate!r}.")
        if augment < 0:
            raise ValueError(f"ResidualStack: `augment` must be >= 0, got {augment!r}.")
        self.scheme = get_scheme(scheme)
        if not skip and self.scheme.name != "euler":
            raise ValueError(
                f"ResidualStack: skip=False (a plain stack) is defined for scheme='euler' only, "
                f"got {self.scheme.name!r}."
            )
        self.field = (
            make_field(key)
            if tied
            else eqx.filter_vmap(make_field)(jax.random.split(key, num_steps))
        )
        self.alpha = jnp.asarray(alpha, jnp.float32) if learn_alpha else float(alpha)
        self.num_steps = num_steps
        self.t1 = float(t1)
        self.tied = tied
        self.skip = skip
        self.drop_rate = float(drop_rate)
        self.checkpoint = checkpoint
        self.augment = augment
        self.root = resolve_root(root) if self.scheme.implicit else None
        self.reversible, self.gamma_logit = self._reversible(reversible, gamma, learn_gamma)

    def _reversible(self, reversible, gamma, learn_gamma):
        if reversible is None:
            if learn_gamma:
                raise ValueError("ResidualStack: learn_gamma=True needs reversible='momentum'.")
            return None, None
        if not self.skip:
            raise ValueError("ResidualStack: a plain stack (skip=False) cannot be reversible.")
        if self.checkpoint:
            raise ValueError(
                "ResidualStack: `checkpoint` and `reversible` exclude each other (a reversible "
                "stack stores no states to checkpoint)."
            )
        if reversible == "reverse":
            if self.scheme.implicit:
                raise ValueError(
                    f"ResidualStack: reversible='reverse' needs an explicit scheme, got "
                    f"{self.scheme.name!r}."
                )
            return ReverseStep(self.scheme.name), None
        if self.scheme.name != "euler":
            raise ValueError(
                f"ResidualStack: reversible={reversible!r} replaces the scheme, which must stay "
                f"'euler'; got scheme={self.scheme.name!r} (reversible='reverse' keeps it)."
            )
        if reversible == "momentum":
            if not 0.0 < gamma < 1.0:
                raise ValueError(f"ResidualStack: `gamma` must be in (0, 1), got {gamma!r}.")
            if learn_gamma:
                logit = jnp.log(jnp.asarray(gamma) / (1.0 - gamma))
                return None, logit  # the method is built from the logit at call time
            return Momentum(gamma=float(gamma)), None
        if learn_gamma:
            raise ValueError(
                f"ResidualStack: learn_gamma=True needs reversible='momentum', got {reversible!r}."
            )
        return resolve_method(reversible), None

    @property
    def is_reversible(self) -> bool:
        """Whether the stack runs a reversible scheme (see `reversible`)."""
        return self.reversible is not None or self.gamma_logit is not None

    def reversible_method(self) -> AbstractReversibleMethod | None:
        """The reversible method the stack runs (a learned momentum resolved), or `None`."""
        if self.gamma_logit is not None:
            return Momentum(gamma=jax.nn.sigmoid(self.gamma_logit))
        return self.reversible

    def survival(self) -> Array:
        """Survival probability of each step under stochastic depth, shape ``(num_steps,)``."""
        k = jnp.arange(1, self.num_steps + 1, dtype=jnp.float32)
        return 1.0 - self.drop_rate * k / self.num_steps

    def _scales(self, key, inference: bool) -> Array:
        p = self.survival()
        if self.drop_rate > 0 and not inference:
            if key is None:
                raise ValueError(
                    "ResidualStack: stochastic depth in training needs `key` (or inference=True)."
                )
            p = jax.random.bernoulli(key, p).astype(jnp.float32)
        return self.alpha * p

    def augmented(self, y: Array) -> Array:
        """The state with `augment` zero channels appended along axis 0, as the stack sees it."""
        if not self.augment:
            return y
        return jnp.concatenate([y, jnp.zeros((self.augment,) + y.shape[1:], y.dtype)])

    def step_function(self, args=None, *, key=None, inference: bool = False, dtype=jnp.float32):
        """The per-step vector field and its per-step arguments, ``(fn, step_args)``.

        Step k of the stack is ``resode.step(fn, k h, y, h, step_args[k], scheme=self.scheme)``
        (every array leaf of `step_args` has leading axis `num_steps`): the field of step k (untied)
        or the shared one (tied), scaled by alpha and by stochastic depth; `args` is injected.
        """
        scales = self._scales(key, inference).astype(dtype)
        field = self.field
        if self.tied:
            return (lambda t, z, s: s * field(t, z, args)), scales
        return (lambda t, z, fs: fs[1] * fs[0](t, z, args)), (field, scales)

    def _integrate(self, fn, y, step_args, **options):
        return integrate(
            fn,
            y,
            0.0,
            self.t1,
            self.num_steps,
            step_args,
            scheme=self.scheme,
            root=self.root,
            per_step_args=True,
            **options,
        )

    def trajectory(self, y: Array, args=None) -> Array:
        """Every state of the stack in evaluation mode: shape ``(num_steps + 1, *y.shape)`` (with
        augmentation), from the input to the output (plain stacks: the output of each block)."""
        y = self.augmented(y)
        fn, step_args = self.step_function(args, inference=True, dtype=jnp.result_type(y))
        if not self.skip:
            return self._plain(fn, y, step_args, save_trajectory=True)
        if self.is_reversible:
            return self._reversible_run(fn, y, step_args, save_trajectory=True)[1]
        return self._integrate(fn, y, step_args, save_trajectory=True)[1]

    def _reversible_run(self, fn, y, step_args, **options):
        return reversible_integrate(
            fn,
            y,
            0.0,
            self.t1,
            self.num_steps,
            step_args,
            method=self.reversible_method(),
            per_step_args=True,
            **options,
        )

    def __call__(self, y: Array, args=None, *, key=None, inference: bool = False, probe=None):
        y = self.augmented(y)
        fn, step_args = self.step_function(
            args, key=key, inference=inference, dtype=jnp.result_type(y)
        )
        if not self.skip:
            return self._plain(fn, y, step_args)
        if self.is_reversible:
            method = self.reversible_method()
            y1 = self._reversible_run(fn, y, step_args)
            fevals = self.num_steps * method.fevals_per_step + method.init_fevals
            return y1, Diagnostics.explicit(fevals, jnp.result_type(y))
        y1, stats = self._integrate(
            fn, y, step_args, return_stats=True, checkpoint=self.checkpoint, probe=probe
        )
        diag = Diagnostics(
            num_fevals=stats.num_fevals,
            num_jvps=stats.num_jvps,
            solver_steps=stats.root_steps,
            residual=stats.root_residual,
            converged=stats.root_converged,
        )
        return y1, diag

    def _plain(self, fn, y, step_args, save_trajectory: bool = False):
        h = self.t1 / self.num_steps
        dynamic, static = eqx.partition(step_args, eqx.is_array)

        def body(z, xs):
            k, a = xs
            z = fn(k * h, z, eqx.combine(a, static)).astype(z.dtype)
            return z, (z if save_trajectory else None)

        if self.checkpoint:
            body = jax.checkpoint(body)
        ks = jnp.arange(self.num_steps, dtype=jnp.result_type(y))
        y1, ys = jax.lax.scan(body, y, (ks, dynamic))
        if save_trajectory:
            return jnp.concatenate([y[None], ys])
        diag = Diagnostics.explicit(self.num_steps, jnp.result_type(y))
        return y1, diag
