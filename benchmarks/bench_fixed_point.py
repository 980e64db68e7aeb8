"""Deep-equilibrium fixed point, forward+backward: resode against optimistix and hand-written JAX.

Run:   .venv/bin/python benchmarks/bench_fixed_point.py [--quick]   (needs optimistix: make bench)
Takes: about 2 min on 2 CPU cores (2026-12-05; 80 s on 2026-11-24 before the traffic rows; the
       DEQ-layer table adds about 10 s and the warm-start table about 15 s, 2026-12-06).
Shows: z = tanh(z W + x U), W scaled to spectral norm 0.5, dim 64, batch 256, float32, relative
       tolerance 1e-5, forward and forward+backward of a mean-square loss. Medians with min/max;
       optimistix / resode ratios (target >= 3 for picard and anderson with the implicit
       adjoint); gradients against optimistix's (target: within 1e-5 relative); backward time
       against forward time; and the backward pass's temporary memory against max_steps (flat
       for implicit, jfb and phantom; growing for unrolled). Time per iteration of each solver
       (batched and vmapped per example; target: Anderson and Broyden within 1.3x of Picard), beside
       the cost of each method's history traffic alone (row writes and passes over the stored
       m-row histories, no arithmetic: the floor of any implementation of it in this XLA loop), and
       a slowly contracting map where the accelerated solvers need far fewer iterations. A
       monotone DEQ (Peaceman-Rachford, forward-backward) against the Anderson DEQ, same size.
       `resode.nn.DEQ` as a user calls it (MLP field 64, batch 128, vmapped per example, the
       layer's defaults): forward and forward+backward time of each solver against Picard's.
       Whether the forward solve's Anderson or Broyden history is a useful warm start for the
       implicit adjoint's backward solve (its iterations, cold and warm).
"""

import argparse
import functools

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import lineax as lx
import numpy as np
from _harness import machine_summary, markdown_table, record, temp_bytes, time_interleaved

import resode

TOL = 1e-5


def layer(z, params):
    W, U, x = params
    return jnp.tanh(z @ W + x @ U)


def init(key, batch, dim):
    k = jax.random.split(key, 4)
    W = jax.random.normal(k[0], (dim, dim))
    W = 0.5 * W / jnp.linalg.norm(W, 2)
    U = jax.random.normal(k[1], (dim, dim)) / np.sqrt(dim)
    x = jax.random.normal(k[2], (batch, dim))
    target = jax.random.normal(k[3], (batch, dim))
    return (W, U, x), target


# --- hand-written custom-VJP Picard (the JAX "implicit layers" tutorial pattern) ----------------


def _picard(g, z0, tol):
    def cond(c):
        z, fz, k = c
        return (jnp.linalg.norm(fz - z) > tol * jnp.linalg.norm(fz)) & (k < 200)

    def body(c):
        _, fz, k = c
        return fz, g(fz), k + 1

    z, fz, _ = jax.lax.while_loop(cond, body, (z0, g(z0), 0))
    return fz


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def handwritten_solve(f, params, z0):
    return _picard(lambda z: f(z, params), z0, TOL)


def _hw_fwd(f, params, z0):
    z = handwritten_solve(f, params, z0)
    return z, (params, z)


def _hw_bwd(f, res, g):
    params, z = res
    _, vjp_z = jax.vjp(lambda z: f(z, params), z)
    u = _picard(lambda u: g + vjp_z(u)[0], g, TOL)
    _, vjp_p = jax.vjp(lambda p: f(z, p), params)
    return vjp_p(u)[0], None


handwritten_solve.defvjp(_hw_fwd, _hw_bwd)


# --- contenders: (params) -> z* for the whole batch -------------------------------------------


def contenders(batch, dim):
    z0 = jnp.zeros((batch, dim))
    out = {
        "hand-written custom-VJP picard": lambda p: handwritten_solve(layer, p, z0),
    }

    def unrolled30(p):
        z = z0
        for _ in range(30):
            z = layer(z, p)
        return z

    out["unrolled 30 iterations (autodiff)"] = unrolled30
    try:
        import optimistix as optx

        def optimistix_solve(p):
            sol = optx.fixed_point(
                layer,
                optx.FixedPointIteration(rtol=TOL, atol=0.0),
                z0,
                p,
                adjoint=optx.ImplicitAdjoint(linear_solver=lx.GMRES(rtol=TOL, atol=1e-8)),
                max_steps=200,
                throw=False,
            )
            return sol.value

        out["optimistix (FixedPointIteration + ImplicitAdjoint GMRES)"] = optimistix_solve

        def optimistix_newton(p):
            # Newton on f(z) - z with a matrix-free GMRES step (the Jacobian of the whole
            # batch, 16384 x 16384 here, is never formed), as resode's Newton does. Its test
            # asks |f(z) - z| <= atol in the max norm as well as a small step: atol = TOL (with
            # atol 1e-8, out of reach in float32, it ran to max_steps).
            gmres = lx.GMRES(rtol=TOL, atol=1e-8)
            sol = optx.root_find(
                lambda z, p: layer(z, p) - z,
                optx.Newton(rtol=TOL, atol=TOL, linear_solver=gmres),
                z0,
                p,
                adjoint=optx.ImplicitAdjoint(linear_solver=gmres),
                max_steps=200,
                throw=False,
            )
            return sol.value

        out["optimistix Newton root find (GMRES step, ImplicitAdjoint GMRES)"] = optimistix_newton
    except ImportError:
        pass

    def resode_solve(solver, adjoint, per_example=False):
        def run(p):
            if per_example:
                W, U, x = p
                one = lambda xi: (
                    resode.fixed_point(
                        lambda z, a: layer(z[None], (W, U, a[None]))[0],
                        jnp.zeros(dim),
                        xi,
                        solver=solver,
                        adjoint=adjoint,
                        tol=TOL,
                        max_steps=200,
                    ).value
                )
                return jax.vmap(one)(x)
            sol = resode.fixed_point(
                layer, z0, p, solver=solver, adjoint=adjoint, tol=TOL, max_steps=200
            )
            return sol.value

        return run

    gmres_adj = resode.ImplicitAdjoint(solver=lx.GMRES(rtol=TOL, atol=1e-8))
    out.update(
        {
            "resode picard + implicit (default: picard adjoint)": resode_solve(
                "picard", "implicit"
            ),
            "resode anderson + implicit (default: anderson adjoint)": resode_solve(
                "anderson", "implicit"
            ),
            "resode broyden + implicit (default: broyden adjoint)": resode_solve(
                "broyden", "implicit"
            ),
            "resode newton + implicit (default: GMRES adjoint)": resode_solve("newton", "implicit"),
            "resode picard + implicit, lineax GMRES adjoint": resode_solve("picard", gmres_adj),
            "resode picard + jfb": resode_solve("picard", "jfb"),
            "resode picard + phantom(5)": resode_solve("picard", "phantom"),
            "resode picard + implicit, vmapped per example": resode_solve(
                "picard", "implicit", per_example=True
            ),
        }
    )
    return out


def memory_table(params, target, dim, steps_list):
    rows, by_adjoint = [], {}
    z0 = jnp.zeros_like(target)
    for adjoint in ("implicit", "jfb", "phantom", "unrolled"):
        sizes = []
        for max_steps in steps_list:
            loss = lambda p, m=max_steps, a=adjoint: jnp.mean(
                (
                    resode.fixed_point(
                        layer, z0, p, solver="picard", adjoint=a, tol=TOL, max_steps=m
                    ).value
                    - target
                )
                ** 2
            )
            sizes.append(temp_bytes(jax.jit(jax.grad(loss)), params))
        rows.append([adjoint] + [f"{s / 1024:.0f}" for s in sizes])
        by_adjoint[adjoint] = sizes
    table = markdown_table(["adjoint"] + [f"max_steps={m} (KiB)" for m in steps_list], rows)
    return table, by_adjoint


class AndersonTraffic(resode.Anderson):
    """Not a solver: a reference for what Anderson's history traffic costs on its own.

    Each iteration does what any Anderson step must do to the state-sized data and nothing else:
    write the new point and residual into the two m-row histories, one pass over the residual
    history (the Gram row) and one over the point history (the combination). The combination's
    weights are one-hot at the newest point (plus 0 times the Gram row, so that the pass is not
    removed as dead code), so the iterate is the Picard step's: no small solve, no masks, no
    safeguard. Anderson per iteration over this is the cost of its arithmetic."""

    def update(self, z, fz, aux, state, tol):
        ys, gs, gram, k = state
        x, unravel = jax.flatten_util.ravel_pytree(z)
        g = jax.flatten_util.ravel_pytree(fz)[0] - x
        slot = k % self.memory
        ys = ys.at[slot].set(x + g)
        gs = gs.at[slot].set(g)
        weights = (jnp.arange(self.memory) == slot) + 0.0 * (gs @ g)
        return unravel(weights @ ys), (ys, gs, gram, k + 1)


class BroydenTraffic(resode.Broyden):
    """Not a solver: Broyden's history traffic on its own (cf. `AndersonTraffic`).

    Writes one row into each of the two histories and makes the four passes every step of the
    limited-memory inverse update needs (H g: a row product with one history and a combination
    of the other; H^T dx: the same, the other way round), then takes the Picard step (plus 0
    times both results, so that the passes stay). The histories are Broyden's own, from its
    `init`: memory + 1 rows, its scratch row included, which its passes read too."""

    def update(self, z, fz, aux, state, tol):
        us, vs, x_prev, g_prev, hg_prev, k, n = state
        x, unravel = jax.flatten_util.ravel_pytree(z)
        g = jax.flatten_util.ravel_pytree(fz)[0] - x
        dx = x - x_prev
        slot = k % self.memory
        # (Written before the passes read them: the other order makes XLA copy both histories.)
        us = us.at[slot].set(g)
        vs = vs.at[slot].set(dx)
        hg = (vs @ g) @ us - g
        v = (us @ dx) @ vs - dx
        return unravel(x + g + 0.0 * (hg + v)), (us, vs, x, g, hg, k + 1, n)


PER_ITERATION_SOLVERS = {
    "picard": resode.Picard(),
    "anderson (memory 5, default)": resode.Anderson(),
    "anderson (memory 2)": resode.Anderson(memory=2),
    "broyden (memory 10, default)": resode.Broyden(),
    "broyden (memory 5)": resode.Broyden(memory=5),
    "anderson's history traffic alone (memory 5)": AndersonTraffic(),
    "broyden's history traffic alone (memory 10)": BroydenTraffic(),
}
# Each default solver and the traffic-only reference of the same memory.
TRAFFIC_OF = {
    "anderson (memory 5, default)": "anderson's history traffic alone (memory 5)",
    "broyden (memory 10, default)": "broyden's history traffic alone (memory 10)",
}


def per_iteration_table(params, dim, repeats, counts):
    """Time per iteration of each solver: the slope of the forward time between two fixed
    iteration counts (tol = 0, so every run takes exactly max_steps), as one batched problem and
    vmapped per example (each example its own solve)."""
    W, U, x = params
    lo, hi = counts
    fns = {}
    for name, solver in PER_ITERATION_SOLVERS.items():
        for n in counts:
            batched = jax.jit(
                lambda p, n=n, s=solver: (
                    resode.fixed_point(
                        layer, jnp.zeros_like(p[2]), p, solver=s, tol=0.0, max_steps=n
                    ).value
                )
            )
            one = lambda xi, p, n, s: (
                resode.fixed_point(
                    lambda z, a: layer(z[None], (a[0], a[1], a[2][None]))[0],
                    jnp.zeros(dim),
                    (p[0], p[1], xi),
                    solver=s,
                    tol=0.0,
                    max_steps=n,
                ).value
            )
            vmapped = jax.jit(
                lambda p, n=n, s=solver, one=one: jax.vmap(one, (0, None, None, None))(
                    p[2], p, n, s
                )
            )
            fns[(name, "batched", n)] = lambda f=batched: f(params)
            fns[(name, "vmapped", n)] = lambda f=vmapped: f(params)
    t = time_interleaved(fns, repeats=repeats)
    per = {
        (name, mode): (t[(name, mode, hi)].median_ms - t[(name, mode, lo)].median_ms)
        / (hi - lo)
        * 1e3
        for name in PER_ITERATION_SOLVERS
        for mode in ("batched", "vmapped")
    }
    rows = [
        [
            name,
            f"{per[(name, 'batched')]:.1f}",
            f"{per[(name, 'batched')] / per[('picard', 'batched')]:.2f}",
            f"{per[(name, 'vmapped')]:.1f}",
            f"{per[(name, 'vmapped')] / per[('picard', 'vmapped')]:.2f}",
        ]
        for name in PER_ITERATION_SOLVERS
    ]
    table = markdown_table(
        ["solver", "batched µs/iter", "/ picard", "vmapped µs/iter", "/ picard"], rows
    )
    return table, per


DEQ_LAYER_SOLVERS = ("picard", "anderson", "broyden")


def deq_layer_table(batch, dim, repeats):
    """`resode.nn.DEQ` as a user calls it: an MLP field (dim -> dim -> dim, tanh), the layer's
    defaults (tol 1e-4, max_steps 30, implicit adjoint), vmapped per example over the batch, a
    mean-square loss. Forward and forward+backward time and mean forward iterations for each
    solver, against Picard."""
    key_field, key_x = jax.random.split(jax.random.PRNGKey(2))
    x = jax.random.normal(key_x, (batch, dim))
    field = resode.nn.MLPField(dim, dim, key=key_field)
    fwd, grad, iters = {}, {}, {}
    for name in DEQ_LAYER_SOLVERS:
        deq = resode.nn.DEQ(field, solver=name)

        def loss(deq, x):
            z, diag = jax.vmap(deq)(x)
            return jnp.mean(z**2), diag

        f = eqx.filter_jit(loss)
        g = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
        iters[name] = float(jnp.mean(f(deq, x)[1].num_fevals))
        fwd[name] = lambda f=f, deq=deq: f(deq, x)
        grad[name] = lambda g=g, deq=deq: g(deq, x)
    t_fwd = time_interleaved(fwd, repeats=repeats)
    t_bwd = time_interleaved(grad, repeats=repeats)
    rows = [
        [
            name,
            f"{iters[name]:.2f}",
            f"{t_fwd[name].median_ms:.3f}",
            f"{t_fwd[name].median_ms / t_fwd['picard'].median_ms:.2f}",
            f"{t_bwd[name].median_ms:.3f}",
            f"{t_bwd[name].median_ms / t_bwd['picard'].median_ms:.2f}",
        ]
        for name in DEQ_LAYER_SOLVERS
    ]
    table = markdown_table(
        ["solver", "forward iterations", "forward ms", "/ picard", "fwd+bwd ms", "/ picard"], rows
    )
    ratios = {name: t_bwd[name].median_ms / t_bwd["picard"].median_ms for name in iters}
    return table, ratios, iters


class BroydenWithHistory(resode.Broyden):
    """Broyden whose solution also reports its final corrections (for `warm_start_table`)."""

    def stats(self, state):
        us, vs, *_, n = state
        return {"us": us, "vs": vs, "n": n}

    def adjoint_estimate(self, sol, zbar):
        """-H^T zbar with H = -I + sum_i u_i v_i^T over the active corrections of `sol`: an
        estimate of the adjoint u = (I - J^T)^{-1} zbar from the forward pass (J = df/dz at z*;
        H ~ (J - I)^{-1}), the backward solve's warm start in SHINE (Ramzi et al., ICLR 2022)."""
        b, st = zbar.ravel(), sol.stats
        active = jnp.arange(st["us"].shape[0]) < st["n"]
        return (b - jnp.where(active, st["us"] @ b, 0.0) @ st["vs"]).reshape(zbar.shape)


class AndersonWithHistory(resode.Anderson):
    """Anderson whose solution also reports its final history (for `warm_start_table`)."""

    def stats(self, state):
        ys, gs, _, k = state
        return {"ys": ys, "gs": gs, "k": k}

    def adjoint_estimate(self, sol, zbar):
        """-H^T zbar (cf. `BroydenWithHistory.adjoint_estimate`) with Anderson's multisecant
        estimate H = -beta I + dY (dG^T dG)^{-1} dG^T (type II, beta = `mixing`): dG and dY are
        the differences of the stored residuals and mixed points from the newest ones, and
        H dG = dY - beta dG = dX holds for every pair."""
        b, st = zbar.ravel(), sol.stats
        ys, gs, k = st["ys"], st["gs"], st["k"]
        m = gs.shape[0]
        newest = (k - 1) % m
        pairs = (jnp.arange(m) < jnp.minimum(k, m)) & (jnp.arange(m) != newest)
        dg = jnp.where(pairs[:, None], gs - gs[newest], 0.0)
        dy = jnp.where(pairs[:, None], ys - ys[newest], 0.0)
        # dG^T (dG dG^T)^{-1} = pinv(dG): by SVD, not the normal equations, whose conditioning
        # (the square of dG's) loses the late, small differences of a converging solve.
        rtol = 10 * float(jnp.finfo(dg.dtype).eps)
        u = self.mixing * b - jnp.linalg.pinv(dg, rtol=rtol) @ (dy @ b)
        return u.reshape(zbar.shape)


def warm_start_table(problems):
    """The backward solve u = zbar + J^T u started cold (from zbar, what the implicit adjoint
    does) and warm (from the forward history's estimate, the solver's `adjoint_estimate`), each with
    the forward solver mirrored, tol as forward, for the mean-square loss against `target`.
    Initial errors are relative to u converged to 1e-7 by Picard. `problems`: (label, params of
    `layer`, target, vmapped); vmapped problems solve each example on its own (means over the
    batch)."""
    rows = []
    for label, (W, U, x), target, vmapped in problems:
        for name, solver in (
            ("anderson", AndersonWithHistory()),
            ("broyden", BroydenWithHistory()),
        ):

            def one(x, target, solver=solver, W=W, U=U):
                fn = lambda z: layer(z, (W, U, x))
                sol = resode.solvers.iterate(
                    solver, lambda z, _: fn(z), jnp.zeros_like(target), None, tol=TOL
                )
                z = sol.value
                zbar = 2 * (z - target) / target.size
                _, vjp = jax.vjp(fn, z)
                adjoint_map = lambda u, _: zbar + vjp(u)[0]
                exact = resode.solvers.iterate(
                    resode.Picard(), adjoint_map, zbar, None, tol=1e-7, max_steps=5000
                ).value
                warm = solver.adjoint_estimate(sol, zbar)
                err = lambda u: jnp.linalg.norm(u - exact) / jnp.linalg.norm(exact)
                steps = [
                    resode.solvers.iterate(
                        solver, adjoint_map, u, None, tol=TOL, max_steps=1000
                    ).num_steps
                    for u in (zbar, warm)
                ]
                return sol.num_steps, err(zbar), err(warm), *steps

            out = jax.jit(jax.vmap(one) if vmapped else one)(x, target)
            k, e_cold, e_warm, n_cold, n_warm = (float(jnp.mean(v)) for v in out)
            rows.append(
                [
                    label,
                    name,
                    f"{k:.1f}",
                    f"{e_cold:.3f}",
                    f"{e_warm:.3f}",
                    f"{n_cold:.2f}",
                    f"{n_warm:.2f}",
                ]
            )
    return markdown_table(
        [
            "problem",
            "solver",
            "forward iterations",
            "initial error, cold",
            "initial error, warm",
            "backward iterations, cold",
            "backward iterations, warm",
        ],
        rows,
    )


def slow_map(key, batch, dim, norm):
    """z = tanh(z W + x U) with W symmetric, eigenvalues spread evenly over [0, `norm`], and
    small inputs (tanh' near 1): a slowly contracting map, where plain iteration crawls (its
    error shrinks by about `norm` per iteration) and secant methods do not."""
    (W, U, x), target = init(key, batch, dim)
    Q = jnp.linalg.qr(W)[0]
    W = (Q * jnp.linspace(0.0, norm, dim)) @ Q.T
    return (W, U, 0.1 * x), target


def slow_map_table(params, target, repeats):
    """Iterations and forward+backward time of each solver on the slowly contracting map."""
    z0 = jnp.zeros_like(target)
    rows, iters, fns = [], {}, {}
    for name in ("picard", "anderson", "broyden"):
        solve = lambda p, s=name: resode.fixed_point(
            layer, z0, p, solver=s, tol=TOL, max_steps=1000
        )
        sol = jax.jit(solve)(params)
        iters[name] = (int(sol.num_steps), bool(sol.converged))
        loss = lambda p, solve=solve: jnp.mean((solve(p).value - target) ** 2)
        g = jax.jit(jax.value_and_grad(loss))
        fns[name] = lambda g=g: g(params)
    t = time_interleaved(fns, repeats=repeats)
    for name in fns:
        n, ok = iters[name]
        rows.append(
            [
                name,
                str(n),
                "yes" if ok else "no",
                f"{t[name].median_ms:.2f}",
                f"{t['picard'].median_ms / t[name].median_ms:.2f}",
            ]
        )
    table = markdown_table(
        ["solver", "forward iterations", "converged", "fwd+bwd ms", "picard / solver"], rows
    )
    return table, t, iters


def monotone_table(batch, dim, repeats):
    """A monotone DEQ z = relu(W z + x U) (W = (1 - m) I - A^T A + B - B^T, m = 0.1) solved by
    resode's splittings, against the Anderson DEQ of the main table (z = tanh(z W + x U), same
    state size and batch) and Anderson / Picard on the monotone map itself."""
    k = jax.random.split(jax.random.PRNGKey(2), 4)
    op = resode.DenseMonotone(dim, monotonicity=0.1, key=k[0])
    U = jax.random.normal(k[1], (dim, dim)) / np.sqrt(dim)
    x = jax.random.normal(k[2], (batch, dim))
    target = jax.random.normal(k[3], (batch, dim))
    (W_t, U_t, x_t), target_t = init(jax.random.PRNGKey(0), batch, dim)

    def monotone(solver):
        def solve(p):
            op, U = p
            sols = jax.vmap(
                lambda xi: resode.monotone_fixed_point(
                    op, U.T @ xi, solver=solver, tol=TOL, max_steps=500
                )
            )(x)
            return sols

        return solve, (op, U), target

    def generic(solver, problem):
        if problem == "monotone":

            def solve(p):
                op, U = p
                w = op.matrix()
                return jax.vmap(
                    lambda xi: resode.fixed_point(
                        lambda z, a: jax.nn.relu(w @ z + a),
                        jnp.zeros(dim),
                        U.T @ xi,
                        solver=solver,
                        tol=TOL,
                        max_steps=500,
                    )
                )(x)

            return solve, (op, U), target

        def solve(p):
            W, U, xs = p
            return jax.vmap(
                lambda xi: resode.fixed_point(
                    lambda z, a: layer(z[None], (W, U, a[None]))[0],
                    jnp.zeros(dim),
                    xi,
                    solver=solver,
                    tol=TOL,
                    max_steps=500,
                )
            )(xs)

        return solve, (W_t, U_t, x_t), target_t

    cases = {
        "monotone: peaceman_rachford (alpha 1)": monotone("peaceman_rachford"),
        "monotone: forward_backward (alpha m/L^2)": monotone("forward_backward"),
        "monotone map, generic anderson": generic("anderson", "monotone"),
        "monotone map, generic picard": generic("picard", "monotone"),
        "tanh DEQ (main table): anderson": generic("anderson", "tanh"),
    }
    fwd, bwd, info = {}, {}, {}
    for name, (solve, params, tgt) in cases.items():
        sols = jax.jit(solve)(params)
        info[name] = (float(jnp.mean(sols.num_steps)), float(jnp.mean(sols.converged)))
        f = jax.jit(lambda p, solve=solve: solve(p).value)
        g = jax.jit(
            jax.value_and_grad(
                lambda p, solve=solve, tgt=tgt: jnp.mean((solve(p).value - tgt) ** 2)
            )
        )
        fwd[name] = lambda f=f, p=params: f(p)
        bwd[name] = lambda g=g, p=params: g(p)
    t_f = time_interleaved(fwd, repeats=repeats)
    t_b = time_interleaved(bwd, repeats=repeats)
    ref = "tanh DEQ (main table): anderson"
    rows = [
        [
            name,
            f"{info[name][0]:.1f}",
            f"{info[name][1]:.2f}",
            f"{t_f[name].median_ms:.2f}",
            f"{t_b[name].median_ms:.2f}",
            f"{t_b[name].median_ms - t_f[name].median_ms:.2f}",
            f"{t_b[ref].median_ms / t_b[name].median_ms:.2f}",
        ]
        for name in cases
    ]
    table = markdown_table(
        [
            "solve",
            "iterations",
            "converged",
            "forward ms",
            "fwd+bwd ms",
            "bwd only ms",
            "anderson DEQ / this (fwd+bwd)",
        ],
        rows,
    )
    return table, t_b, info


def main(quick: bool = False) -> str:
    batch, dim = (8, 8) if quick else (256, 64)
    repeats = 5 if quick else 150
    params, target = init(jax.random.PRNGKey(0), batch, dim)
    solves = contenders(batch, dim)
    fwd = {name: jax.jit(s) for name, s in solves.items()}
    grad = {
        name: jax.jit(jax.value_and_grad(lambda p, s=s: jnp.mean((s(p) - target) ** 2)))
        for name, s in solves.items()
    }
    # optimistix's Newton takes 100x longer per call than the rest: interleaved with them, its
    # calls leave the next contender with cold caches (that one's forward measured 1.7x slower).
    # It is timed in a group of its own with resode's Newton, which the ratio compares it to.
    newton = "resode newton + implicit (default: GMRES adjoint)"
    heavy = [n for n in solves if n.startswith("optimistix Newton")]
    light = [n for n in solves if n not in heavy]
    t_fwd = time_interleaved({n: (lambda f=fwd[n]: f(params)) for n in light}, repeats=repeats)
    t_bwd = time_interleaved({n: (lambda g=grad[n]: g(params)) for n in light}, repeats=repeats)
    pair = heavy + [newton]
    heavy_repeats = max(3, repeats // 10)
    pair_fwd = time_interleaved(
        {n: (lambda f=fwd[n]: f(params)) for n in pair}, repeats=heavy_repeats
    )
    pair_bwd = time_interleaved(
        {n: (lambda g=grad[n]: g(params)) for n in pair}, repeats=heavy_repeats
    )
    t_fwd.update({n: pair_fwd[n] for n in heavy})
    t_bwd.update({n: pair_bwd[n] for n in heavy})

    counts = (4, 8) if quick else (10, 40)
    iter_repeats = 5 if quick else 60
    iter_table, per_iter = per_iteration_table(params, dim, repeats=iter_repeats, counts=counts)
    slow_norm = 0.98
    slow_params, slow_target = slow_map(jax.random.PRNGKey(1), batch, dim, slow_norm)
    slow_table, slow_t, slow_iters = slow_map_table(
        slow_params, slow_target, repeats=3 if quick else 40
    )

    mono_table, mono_t, mono_info = monotone_table(batch, dim, repeats=3 if quick else 40)
    deq_batch, deq_dim = (8, 8) if quick else (128, 64)
    deq_table, deq_ratio, deq_iters = deq_layer_table(
        deq_batch, deq_dim, repeats=3 if quick else 40
    )

    warm_problems = [
        (f"tanh DEQ, dim {dim}, batched", params, target, False),
        (f"tanh DEQ, dim {dim}, vmapped per example", params, target, True),
    ]
    if dim != 8:  # fewer dimensions: the forward's secant pairs span more of the space
        small_params, small_target = init(jax.random.PRNGKey(0), batch, 8)
        warm_problems.append(
            ("tanh DEQ, dim 8, vmapped per example", small_params, small_target, True)
        )
    for key in (1, 2, 3):
        warm_problems.append(
            (
                f"slow map (key {key}), batched",
                *slow_map(jax.random.PRNGKey(key), batch, dim, slow_norm),
                False,
            )
        )
    warm_table = warm_start_table(warm_problems)

    steps_list = (10, 50) if quick else (10, 50, 200)
    mem_table, mem = memory_table(params, target, dim, steps_list)
    ref_name = next(
        (n for n in solves if n.startswith("optimistix")), "hand-written custom-VJP picard"
    )
    ref_grad = grad[ref_name](params)[1]

    def grad_err(name):
        g = grad[name](params)[1]
        num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(g, ref_grad, strict=True))
        den = sum(float(jnp.sum(b**2)) for b in ref_grad)
        return (num / den) ** 0.5

    base = t_bwd[ref_name].median_ms
    rows = []
    for name in solves:
        f, b = t_fwd[name], t_bwd[name]
        rows.append(
            [
                name,
                f"{f.median_ms:.3f} [{f.min_ms:.3f}, {f.max_ms:.3f}]",
                f"{b.median_ms:.3f} [{b.min_ms:.3f}, {b.max_ms:.3f}]",
                f"{b.median_ms - f.median_ms:.3f}",
                f"{base / b.median_ms:.2f}",
                f"{grad_err(name):.1e}",
            ]
        )
    out = [
        f"Machine: {machine_summary()}",
        "",
        f"z = tanh(z W + x U), dim {dim}, batch {batch}, float32, relative tol {TOL:g}. "
        f"Median [min, max] ms. speed-up = {ref_name} fwd+bwd / contender fwd+bwd; "
        f"grad err = relative L2 distance of the gradient to {ref_name}'s."
        + (
            f" optimistix's Newton is timed in a group of its own with resode's Newton "
            f"({heavy_repeats} calls each; its long calls would leave the next contender with "
            f"cold caches); the others take turns {repeats} times."
            if heavy
            else ""
        ),
        "",
        markdown_table(
            ["contender", "forward ms", "fwd+bwd ms", "bwd only ms", "speed-up", "grad err"], rows
        ),
        "",
        f"Time per iteration (µs; slope of the forward time from {counts[0]} to {counts[1]} "
        "iterations at tol 0, same problem; batched = one solve over the whole batch, vmapped = "
        "one solve per example). The two history-traffic rows are not solvers: each does only "
        "what its method must do to the stored histories every step (write the new rows, the "
        "passes over them), then the Picard step, so they are the floor of any implementation "
        "of that method and memory in this loop:",
        "",
        iter_table,
        "",
        f"A slowly contracting map (W symmetric, eigenvalues evenly in [0, {slow_norm}], inputs "
        f"scaled by 0.1, same sizes, tol "
        f"{TOL:g}, max_steps 1000): iterations of the forward solve and forward+backward time "
        "(implicit adjoint mirroring the solver).",
        "",
        slow_table,
        "",
        f"Monotone DEQ (Winston & Kolter; m = 0.1, dim {dim}, batch {batch}, float32, tol "
        f"{TOL:g}, max_steps 500, vmapped per example, implicit gradients): resode's splittings "
        "against the Anderson DEQ of the main table at the same size, and against generic "
        "Anderson / Picard on the same monotone map. Iterations and converged: means over the "
        "batch.",
        "",
        mono_table,
        "",
        f"A DEQ layer as a user calls it (`resode.nn.DEQ` with its defaults: tol 1e-4, "
        f"max_steps 30, implicit adjoint; an MLP field {deq_dim} -> {deq_dim} -> {deq_dim}, tanh; "
        f"batch {deq_batch}, vmapped per example; mean-square loss). Forward iterations: mean "
        "over the batch.",
        "",
        deq_table,
        "",
        "Warm-starting the implicit adjoint's backward solve u = zbar + J^T u from what the "
        "forward solve learnt (SHINE's idea, Ramzi et al., ICLR 2022): its history defines an "
        "inverse-Jacobian estimate H ~ (J - I)^{-1}, and -H^T zbar estimates u. Cold = from the "
        "cotangent zbar (what the implicit adjoint does). Forward and backward use the same "
        f"solver, tol {TOL:g}, mean-square loss; initial error = relative distance to u "
        "converged to 1e-7; slow maps as above (the row with the table's key 1 and two more). "
        "Iteration counts only: a warm start that saves no iteration cannot save time.",
        "",
        warm_table,
        "",
        "Temporary memory of the compiled forward+backward (resode picard; XLA memory analysis):",
        "",
        mem_table,
        "",
    ]
    if ref_name.startswith("optimistix"):
        for name in solves:
            if name.startswith(("resode picard + implicit (", "resode anderson + implicit (")):
                label = f"optimistix / {name.split(' (')[0]} (fwd+bwd)"
                out.append(record("fixed_point", label, base / t_bwd[name].median_ms, ">=", 3.0))
        if heavy:
            out.append(
                record(
                    "fixed_point",
                    "optimistix Newton root find / resode newton + implicit (fwd+bwd)",
                    pair_bwd[heavy[0]].median_ms / pair_bwd[newton].median_ms,
                )
            )
        errs = [grad_err(n) for n in solves if n.startswith("resode") and "implicit" in n]
        out.append(
            record(
                "fixed_point", "max gradient error vs optimistix (implicit)", max(errs), "<=", 1e-5
            )
        )
    hand, pic = (
        "hand-written custom-VJP picard",
        "resode picard + implicit (default: picard adjoint)",
    )

    def bwd_over_fwd(name):
        return (t_bwd[name].median_ms - t_fwd[name].median_ms) / t_fwd[name].median_ms

    out.append(
        record(
            "fixed_point",
            "backward/forward: resode picard + implicit / hand-written custom-VJP picard",
            bwd_over_fwd(pic) / bwd_over_fwd(hand),
            "<=",
            1.1,
        )
    )
    for name, traffic in TRAFFIC_OF.items():
        short = name.split(" (")[0]
        for mode in ("batched", "vmapped"):
            ratio = per_iter[(name, mode)] / per_iter[("picard", mode)]
            label = f"{short} / picard time per iteration, {mode}"
            out.append(record("fixed_point", label, ratio, "<=", 1.3))
        for mode in ("batched", "vmapped"):
            floor = per_iter[(traffic, mode)] / per_iter[("picard", mode)]
            label = f"{short}'s history traffic alone / picard time per iteration, {mode}"
            out.append(record("fixed_point", label, floor))
            label = f"{short} / its history traffic alone, time per iteration, {mode}"
            out.append(
                record("fixed_point", label, per_iter[(name, mode)] / per_iter[(traffic, mode)])
            )
    best = min(("anderson", "broyden"), key=lambda n: slow_t[n].median_ms)
    out.append(
        record(
            "fixed_point",
            f"slow map: picard / {best} fwd+bwd time "
            f"({slow_iters['picard'][0]} vs {slow_iters[best][0]} iterations)",
            slow_t["picard"].median_ms / slow_t[best].median_ms,
            ">=",
            1.0,
        )
    )
    for name in ("anderson", "broyden"):
        out.append(
            record(
                "fixed_point",
                f"DEQ layer (MLP {deq_dim}, batch {deq_batch}, vmapped): {name} / picard fwd+bwd "
                f"time ({deq_iters[name]:.1f} vs {deq_iters['picard']:.1f} iterations)",
                deq_ratio[name],
            )
        )
    pr = "monotone: peaceman_rachford (alpha 1)"
    out.append(
        record(
            "fixed_point",
            f"monotone DEQ (peaceman_rachford, {mono_info[pr][0]:.0f} iterations) / anderson DEQ "
            f"({mono_info['tanh DEQ (main table): anderson'][0]:.0f} iterations) fwd+bwd time, "
            "same size",
            mono_t[pr].median_ms / mono_t["tanh DEQ (main table): anderson"].median_ms,
        )
    )
    for adjoint in ("implicit", "jfb", "phantom"):
        sizes = mem[adjoint]
        out.append(
            record(
                "fixed_point",
                f"{adjoint} backward memory, max_steps {steps_list[-1]} / {steps_list[0]}",
                sizes[-1] / sizes[0],
                "<=",
                1.05,
            )
        )
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    print(main(quick=parser.parse_args().quick))
