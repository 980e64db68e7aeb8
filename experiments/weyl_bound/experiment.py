"""Weyl's bound: ||W||_2 <= eps puts every singular value of I + W in [1 - eps, 1 + eps].

Random Gaussian matrices scaled to spectral norm exactly `eps` (the worst case the bound allows)
make residual blocks I + W_i; their singular values and those of the product of `depth` blocks are
checked against [1 - eps, 1 + eps] and [(1 - eps)^L, (1 + eps)^L] in float64 (exact). A plain stack
of blocks A_i with the same largest singular value 1 + eps (random directions) is the comparison:
its singular values spread exponentially with depth (empirical, over seeds).
"""

import dataclasses

import numpy as np

from resode.config import ConfigError
from resode.experiments import (
    Result,
    empirical_check,
    exact_check,
    fmt_spread,
    plot_series,
    seed_list,
    spread,
)

CLAIM = (
    "If ||W||_2 <= eps, every singular value of I + W lies in [1 - eps, 1 + eps] and a stack of L "
    "blocks in [(1 - eps)^L, (1 + eps)^L]; a plain stack of comparable weights spreads "
    "exponentially."
)
SOURCE = "principles.md: eigenvalues 1 + lambda(W), Weyl's bound, (1 + eps)^L over a stack"
KEY_FIGURE = "plain_stack_sigma_min"


@dataclasses.dataclass
class Config:
    eps: float = 0.1  # spectral norm of every residual branch W_i
    depth: int = 32  # blocks L
    dim: int = 64  # matrix size
    seed: int = 0
    num_seeds: int = 5  # independent draws for the plain-stack comparison


QUICK = {"depth": 8, "dim": 16, "num_seeds": 3}


def validate(cfg: Config) -> None:
    if not cfg.eps > 0:
        raise ConfigError(f"eps: must be > 0, got {cfg.eps}.")
    for key in ("depth", "dim", "num_seeds"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}.")


def _scaled(rng, dim, norm):
    g = rng.normal(size=(dim, dim))
    return g * (norm / np.linalg.norm(g, 2))


def _log10_singular_range(blocks):
    """log10 of the largest and smallest singular value of the products of the first k blocks,
    k = 1..L (QR-accumulated so that tiny singular values are not lost to rounding)."""
    dim = blocks[0].shape[0]
    q, logs = np.eye(dim), np.zeros(dim)
    top, bottom = [], []
    for b in blocks:
        # Track P_k = Q_k diag(exp(logs)) V_k^T through the SVD of B Q diag(exp(logs)).
        m = (b @ q) * np.exp(logs - logs.max())[None, :]
        u, s, _ = np.linalg.svd(m)
        q, logs = u, np.log(np.maximum(s, 1e-300)) + logs.max()
        top.append(logs.max() / np.log(10))
        bottom.append(logs.min() / np.log(10))
    return np.array(top), np.array(bottom)


def run(cfg: Config, ctx) -> Result:
    eps, L = cfg.eps, cfg.depth
    seeds = seed_list(cfg.seed, cfg.num_seeds)
    block_min, block_max, stack_min, stack_max = [], [], [], []
    plain_min, plain_max, plain_logcond, res_logcond = [], [], [], []
    for s in seeds:
        rng = np.random.default_rng(s)
        ws = [_scaled(rng, cfg.dim, eps) for _ in range(L)]
        blocks = [np.eye(cfg.dim) + w for w in ws]
        sv = np.concatenate([np.linalg.svd(b, compute_uv=False) for b in blocks])
        block_min.append(sv.min())
        block_max.append(sv.max())
        top, bottom = _log10_singular_range(blocks)
        stack_min.append(10 ** bottom[-1])
        stack_max.append(10 ** top[-1])
        res_logcond.append(top - bottom)
        plain = [_scaled(rng, cfg.dim, 1 + eps) for _ in range(L)]
        ptop, pbottom = _log10_singular_range(plain)
        plain_min.append(10 ** pbottom[-1])
        plain_max.append(10 ** ptop[-1])
        plain_logcond.append(ptop - pbottom)
    res_logcond, plain_logcond = np.array(res_logcond), np.array(plain_logcond)

    tol = 1e3 * np.finfo(np.float64).eps
    lo_block, hi_block = 1 - eps, 1 + eps
    lo_stack, hi_stack = max(0.0, 1 - eps) ** L, (1 + eps) ** L
    checks = [
        exact_check(
            "block_sigma_min",
            "every singular value of every block I + W_i is >= 1 - eps",
            measured=min(block_min),
            expected=lo_block,
            tolerance=tol,
            compare="ge",
        ),
        exact_check(
            "block_sigma_max",
            "every singular value of every block I + W_i is <= 1 + eps",
            measured=max(block_max),
            expected=hi_block,
            tolerance=tol,
            compare="le",
        ),
        exact_check(
            "stack_sigma_min",
            f"the product of L = {L} blocks has every singular value >= max(0, 1 - eps)^L",
            measured=min(stack_min),
            expected=lo_stack,
            tolerance=tol * L * lo_stack,
            compare="ge",
        ),
        exact_check(
            "stack_sigma_max",
            f"the product of L = {L} blocks has every singular value <= (1 + eps)^L",
            measured=max(stack_max),
            expected=hi_stack,
            tolerance=tol * L * hi_stack,
            compare="le",
        ),
    ]
    figures = {
        "block_sigma_min": float(min(block_min)),
        "block_sigma_max": float(max(block_max)),
        "stack_sigma_min": float(min(stack_min)),
        "stack_sigma_max": float(max(stack_max)),
        "plain_stack_sigma_min": float(plain_min[0]),
        "plain_stack_sigma_max": float(plain_max[0]),
        "plain_stack_sigma_min_over_seeds": spread(plain_min),
        "plain_log10_condition": spread(plain_logcond[:, -1]),
        "residual_log10_condition": spread(res_logcond[:, -1]),
        "bound": {
            "lo_block": lo_block,
            "hi_block": hi_block,
            "lo_stack": lo_stack,
            "hi_stack": hi_stack,
        },
    }
    plain_sp = spread(plain_logcond[:, -1])
    res_sp = spread(res_logcond[:, -1])
    if eps < 1:
        bound_logcond = L * np.log10((1 + eps) / (1 - eps))
        held = bool(np.all(plain_logcond[:, -1] > bound_logcond))
        checks.append(
            empirical_check(
                "plain_spreads_exponentially",
                f"a plain stack of {L} blocks with the same top singular value 1 + eps spreads its "
                "singular values beyond what Weyl's bound allows the residual stack",
                measured=plain_sp["mean"],
                expected=f"log10 sigma_max/sigma_min > {bound_logcond:.3g} for every seed",
                holds=held,
                detail=f"plain {fmt_spread(plain_sp, '.3g')}, residual {fmt_spread(res_sp, '.3g')}"
                f" (log10 condition number at depth {L}; bound {bound_logcond:.3g})",
            )
        )
        figures["residual_log10_condition_bound"] = float(bound_logcond)
    depths = np.arange(1, L + 1)
    slope = float(np.polyfit(depths, plain_logcond.mean(0), 1)[0]) if L > 1 else None
    figures["plain_log10_condition_per_block"] = slope
    reference = {}
    if eps < 1:
        reference["residual bound L log10((1+eps)/(1-eps))"] = depths * np.log10(
            (1 + eps) / (1 - eps)
        )
    plot = plot_series(
        ctx.plots / "condition_vs_depth.png",
        depths,
        {"plain stack": plain_logcond, "residual stack": res_logcond},
        xlabel="blocks L",
        ylabel="log10 sigma_max / sigma_min",
        title=f"eps = {eps}, dim = {cfg.dim}, {len(seeds)} seeds",
        reference=reference,
    )
    report = (
        "## What was measured\n\n"
        f"{len(seeds)} draws (seeds {seeds[0]}-{seeds[-1]}) of {L} Gaussian {cfg.dim}x{cfg.dim} "
        f"matrices scaled to ||W_i||_2 = {eps}. Blocks I + W_i: singular values in "
        f"[{min(block_min):.6f}, {max(block_max):.6f}] against the bound [{lo_block:.6f}, "
        f"{hi_block:.6f}]. Product of {L} blocks: [{min(stack_min):.4g}, {max(stack_max):.4g}] "
        f"against [{lo_stack:.4g}, {hi_stack:.4g}].\n\n"
        f"Plain stack (blocks with top singular value {1 + eps:g}): smallest singular value "
        f"{fmt_spread(spread(plain_min), '.3g')}, log10 condition number "
        f"{fmt_spread(plain_sp, '.3g')} at depth {L}, growing by "
        f"{slope if slope is not None else float('nan'):.3g} decades per block; the residual "
        f"stack's is {fmt_spread(res_sp, '.3g')}.\n"
    )
    return Result(checks, figures, report, [plot])
