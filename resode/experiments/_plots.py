"""Plots of experiments: measured quantities against a parameter, mean and spread over seeds."""

from pathlib import Path

import numpy as np


def plot_series(
    path: str | Path,
    x,
    series: dict[str, np.ndarray],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    reference: dict[str, np.ndarray] | None = None,
) -> Path:
    """One line per entry of `series` against `x`: each value an array of shape ``(seeds,
    len(x))`` (or ``(len(x),)``) drawn as its mean with a band of one standard deviation and the
    seeds as faint points. `reference` lines (theory) are dashed. Returns `path` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(x, dtype=float)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, values in series.items():
        v = np.atleast_2d(np.asarray(values, dtype=float))
        mean = np.nanmean(v, axis=0)
        (line,) = ax.plot(x, mean, marker="o", label=label)
        if v.shape[0] > 1:
            std = np.nanstd(v, axis=0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            for row in v:
                ax.plot(x, row, ".", color=line.get_color(), alpha=0.35, markersize=4)
    for label, values in (reference or {}).items():
        ax.plot(x, np.asarray(values, dtype=float), "k--", linewidth=1, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
