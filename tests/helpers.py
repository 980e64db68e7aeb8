"""Shared parametrisation tuples and tolerances for the test suite."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import resode

# The contract of DESIGN.md: every named scheme with its order and whether it is implicit.
CONTRACT_ORDERS = {
    "euler": 1,
    "midpoint": 2,
    "heun": 2,
    "ralston": 2,
    "kutta3": 3,
    "ssprk3": 3,
    "rk4": 4,
    "rk38": 4,
    "backward_euler": 1,
    "trapezoid": 2,
    "implicit_midpoint": 2,
    "sdirk2": 2,
    "gauss_legendre4": 4,
    "radau_iia3": 3,
}
IMPLICIT = (
    "backward_euler",
    "trapezoid",
    "implicit_midpoint",
    "sdirk2",
    "gauss_legendre4",
    "radau_iia3",
)
EXPLICIT = tuple(name for name in CONTRACT_ORDERS if name not in IMPLICIT)
ALL_SCHEMES = tuple(CONTRACT_ORDERS)
L_STABLE = ("backward_euler", "sdirk2", "radau_iia3")

SOLVERS = ("picard", "anderson", "broyden", "newton")
ADJOINTS = ("implicit", "jfb", "phantom", "unrolled")

# Tolerances in one place.
FD_RTOL = 1e-6  # gradients against central finite differences (float64)
REF_RTOL = 1e-8  # gradients against an independent unrolled reference (float64)
ORDER_SLACK = 0.3  # measured order within this of the declared one


def default_emitters(fn):
    """`fn` jitted with XLA:CPU's default (MLIR) fusion emitters, as full runs compile.

    The suite compiles with the elemental emitters (`resode.cli.QUICK_XLA_FLAGS`, set in
    conftest), which contract and order floating-point operations per program, so two programs
    of different structure that perform the same operations (a while loop and a scan, with and
    without a conditional) can differ in the last bit. Tests that assert such programs agree bit
    for bit compile both with this."""
    if "--xla_cpu_use_fusion_emitters=false" not in os.environ.get("XLA_FLAGS", ""):
        return jax.jit(fn)
    return jax.jit(fn, compiler_options={"xla_cpu_use_fusion_emitters": True})


def rel_err(a, b) -> float:
    a = np.asarray(a)
    b = np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def central_fd(fn, x, eps=1e-6):
    """Central finite-difference gradient of scalar `fn` at array `x` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        grad[idx] = (float(fn(jnp.asarray(x + e))) - float(fn(jnp.asarray(x - e)))) / (2 * eps)
    return grad


def tanh_field(t, y, args):
    """A nonlinear, non-autonomous field: tanh(W y + b) (1 + t/10) - y^3 / 2."""
    W, b = args
    return jnp.tanh(W @ y + b) * (1.0 + 0.1 * t) - 0.5 * y**3


def field_args(dim=3, seed=0, dtype=jnp.float64):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    W = jax.random.normal(k1, (dim, dim), dtype) / np.sqrt(dim)
    b = 0.1 * jax.random.normal(k2, (dim,), dtype)
    y0 = jax.random.normal(k3, (dim,), dtype)
    return y0, (W, b)


def scheme_ids():
    return list(resode.list_schemes())
