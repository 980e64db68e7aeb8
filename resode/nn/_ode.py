"""ODEBlock: an adaptive continuous-depth solve through diffrax (nothing re-implemented).

diffrax is imported when a block is first called, not with resode: importing it costs about 0.2 s
of every process's start-up (``import resode.cli`` 1.57 -> 1.37 s on the project's CPU machine),
which the programs that never solve an ODE need not pay."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..solvers import precision_floor
from ._diagnostics import Diagnostics
from ._fields import AbstractVectorField

#: name -> (diffrax solver class name, evaluations per step, or None when not known)
_SOLVERS = {
    "tsit5": ("Tsit5", 6),
    "dopri5": ("Dopri5", 6),
    "dopri8": ("Dopri8", 13),
    "kvaerno5": ("Kvaerno5", None),
}
#: name -> diffrax adjoint class name
_ADJOINTS = {
    "recursive_checkpoint": "RecursiveCheckpointAdjoint",
    "backsolve": "BacksolveAdjoint",
    "direct": "DirectAdjoint",
}


class ODEBlock(eqx.Module):
    """``y(t1)`` of ``dy/dt = field(t, y, args)`` from ``y(0) = y``, adaptively, through diffrax.

    **Arguments:**

    - `field`: the vector field.
    - `solver`: ``"tsit5"`` (default), ``"dopri5"``, ``"dopri8"``, or ``"kvaerno5"`` (implicit, for
      stiff fields).
    - `rtol`, `atol`: tolerances of diffrax's PID step-size controller (`pcoeff`, `icoeff`,
      `dcoeff` as in `diffrax.PIDController`; the defaults give an integral controller).
    - `t1` (default 1), `dt0` (first step; `None`: diffrax picks it).
    - `adjoint`: ``"recursive_checkpoint"`` (default; diffrax's), ``"backsolve"`` or ``"direct"``.
    - `max_steps` (default 4096).

    Call as ``block(y, args=None) -> (y1, Diagnostics)``. `solver_steps` counts accepted and
    rejected steps; `num_fevals` is ``1 + e * solver_steps`` with e = 6 for tsit5 and dopri5 and
    13 for dopri8 (checked against a counting callback in the tests), and -1 for kvaerno5, whose
    Newton iterations diffrax does not report; `converged` is diffrax's success.
    """

    field: AbstractVectorField
    solver: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    pcoeff: float = eqx.field(static=True)
    icoeff: float = eqx.field(static=True)
    dcoeff: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        field: AbstractVectorField,
        *,
        solver: str = "tsit5",
        rtol: float = 1e-3,
        atol: float = 1e-6,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        t1: float = 1.0,
        dt0: float | None = None,
        adjoint: str = "recursive_checkpoint",
        max_steps: int = 4096,
    ):
        if solver not in _SOLVERS:
            raise ValueError(f"ODEBlock: unknown solver {solver!r}. Valid: {', '.join(_SOLVERS)}.")
        if adjoint not in _ADJOINTS:
            raise ValueError(
                f"ODEBlock: unknown adjoint {adjoint!r}. Valid: {', '.join(_ADJOINTS)}."
            )
        self.field = field
        self.solver = solver
        self.rtol, self.atol = rtol, atol
        self.pcoeff, self.icoeff, self.dcoeff = pcoeff, icoeff, dcoeff
        self.t1 = float(t1)
        self.dt0 = dt0
        self.adjoint = adjoint
        self.max_steps = max_steps

    def __call__(self, y: Array, args=None):
        import diffrax as dfx

        solver_name, per_step = _SOLVERS[self.solver]
        dtype = jnp.result_type(y)
        term, y0 = self.field, y
        if (wide := jnp.promote_types(dtype, jnp.float32)) != dtype:
            # A 16-bit state (mixed precision): diffrax integrates and controls the error in
            # float32 while the field is evaluated in the state's dtype. rtol and atol are never
            # below that dtype's epsilon, the accuracy of each evaluation: below it the error
            # estimate is rounding noise and the controller rejects steps for nothing.
            field = self.field
            term = lambda t, z, a: field(t, z.astype(dtype), a).astype(wide)
            y0 = y.astype(wide)
        controller = dfx.PIDController(
            rtol=max(self.rtol, precision_floor(dtype)),
            atol=max(self.atol, precision_floor(dtype)),
            pcoeff=self.pcoeff,
            icoeff=self.icoeff,
            dcoeff=self.dcoeff,
        )
        sol = dfx.diffeqsolve(
            dfx.ODETerm(term),
            getattr(dfx, solver_name)(),
            0.0,
            self.t1,
            self.dt0,
            y0,
            args,
            stepsize_controller=controller,
            adjoint=getattr(dfx, _ADJOINTS[self.adjoint])(),
            saveat=dfx.SaveAt(t1=True),
            max_steps=self.max_steps,
            throw=False,
        )
        steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
        if per_step is None:
            nfe = jnp.array(-1, jnp.int32)
        else:
            nfe = 1 + per_step * steps
        diag = Diagnostics(
            num_fevals=nfe,
            num_jvps=jnp.array(0, jnp.int32),
            solver_steps=steps,
            residual=jnp.zeros((), wide),
            converged=sol.result == dfx.RESULTS.successful,
        )
        return sol.ys[-1].astype(dtype), diag
