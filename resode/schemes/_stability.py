"""The stability function R(z) of a Runge--Kutta scheme."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from ._scheme import Scheme, get_scheme


def stability_function(scheme: "str | Scheme", z: ArrayLike):
    r"""The stability function $R(z) = 1 + z b^\top (I - zA)^{-1} \mathbf{1}$, elementwise.

    Applying one step of the scheme with step size $h$ to $y' = \lambda y$ gives
    $y_{n+1} = R(h\lambda) y_n$; the scheme is stable at $z = h\lambda$ when $|R(z)| \le 1$.

    Evaluated as the ratio of determinants $\det(I - zA + z\mathbf{1}b^\top) / \det(I - zA)$, which
    is exact, vectorised, and gives ``inf`` (rather than raising) at the poles of $R$.

    **Arguments:**

    - `scheme`: a name from [`list_schemes`][] or a [`Scheme`][].
    - `z`: a complex (or real) array of any shape. NumPy in gives NumPy out; a JAX array in gives a
      JAX array out (so it can be used under `jax.jit`).

    **Returns:** a complex array of the same shape as `z`.
    """
    tableau = get_scheme(scheme).tableau
    xp = jnp if isinstance(z, jax.Array) else np
    z = xp.asarray(z)
    dtype = (
        jnp.result_type(z.dtype, jnp.complex64)
        if xp is jnp
        else np.result_type(z.dtype, np.complex128)
    )
    z = z.astype(dtype)[..., None, None]
    s = tableau.num_stages
    a = xp.asarray(tableau.a, dtype=dtype)
    eye = xp.eye(s, dtype=dtype)
    one_bt = xp.asarray(np.outer(np.ones(s), tableau.b), dtype=dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.linalg.det(eye - z * a + z * one_bt) / xp.linalg.det(eye - z * a)
