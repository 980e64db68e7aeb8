"""Shared benchmark harness: warm-up, block_until_ready, medians, compile time and memory.

Every benchmark times each contender in the same process and reports ratios against a named
baseline, so the figures do not depend on what else the machine was doing between runs.
"""

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata

import jax

from resode.experiments import cpu_description


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def _block(out):
    return jax.block_until_ready(out)


def time_call(
    fn: Callable[[], object], *, repeats: int = 30, warmup: int = 3, sync=_block
) -> Timing:
    """Median wall time of ``sync(fn())`` over `repeats` calls, after `warmup` untimed calls.

    `sync` must wait until the work is done (JAX dispatches asynchronously); for PyTorch pass
    ``sync=lambda out: out``.
    """
    for _ in range(warmup):
        sync(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int = 30,
    warmup: int = 3,
    sync=_block,
    settle: bool = True,
) -> dict[str, Timing]:
    """As `time_call` for several contenders, taking turns call by call, so that a slow phase of
    the machine (another process, frequency scaling) affects all of them alike.

    With `settle` (the default) each timed call follows an untimed call of the same contender,
    so that it does not pay for its predecessor's cache footprint: after a 23 ms contender, a
    1.4 ms one measured 1.74 ms, 25 % slow, and after a 130 ms one a 0.35 ms one 0.58 ms."""
    for fn in fns.values():
        for _ in range(warmup):
            sync(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle:
                sync(fn())
            start = time.perf_counter()
            sync(fn())
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: Timing(statistics.median(s), min(s), max(s), repeats) for name, s in samples.items()
    }


def compile_seconds(jitted, *args) -> float:
    """Wall time of lowering and compiling `jitted` for `args` (nothing is executed)."""
    start = time.perf_counter()
    jitted.lower(*args).compile()
    return time.perf_counter() - start


def temp_bytes(jitted, *args) -> int | None:
    """Peak temporary memory of the compiled computation, from XLA's memory analysis."""
    compiled = jitted.lower(*args).compile()
    compiled = getattr(compiled, "compiled", compiled)  # eqx.filter_jit wraps jax's Compiled
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """One headline figure of a benchmark: `value` against `target` (met when ``value op
    target``, op one of ``<=``, ``>=``; no target: reported only)."""

    bench: str
    name: str
    value: float
    op: str | None = None
    target: float | None = None

    @property
    def met(self) -> bool | None:
        if self.target is None or self.op is None:
            return None
        return self.value <= self.target if self.op == "<=" else self.value >= self.target


#: Every ratio recorded in this process (`resode bench` prints them as one table).
RATIOS: list[Ratio] = []


def record(bench: str, name: str, value: float, op: str | None = None, target=None) -> str:
    """Record a headline ratio and return its report line, e.g. ``- a / b = 1.02 (target <=
    1.10)``."""
    RATIOS.append(Ratio(bench, name, float(value), op, target))
    tail = f" (target {op} {target:g})" if target is not None else ""
    return f"- {name} = {value:.3g}{tail}"


def machine_summary() -> str:
    versions = []
    for pkg in (
        "jax",
        "jaxlib",
        "equinox",
        "diffrax",
        "lineax",
        "optimistix",
        "torch",
        "torchdiffeq",
    ):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    cpu = cpu_description()
    device = jax.devices()[0]
    return (
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} cores ({cpu}); "
        f"JAX device {device.platform}: {device.device_kind}; "
        f"Python {platform.python_version()}; " + ", ".join(versions)
    )


def save_plot(path, series: dict, *, xlabel: str, ylabel: str, title: str = "") -> None:
    """A log-log line plot of ``{label: (xs, ys)}`` as PNG (figures for RESULTS.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
