"""Compare finished runs: one markdown table, one CSV and comparison plots.

[`write_report`][] reads run directories (or sweep directories, whose sub-directories are runs),
finds the config keys whose values differ between the runs (the swept keys), and writes
``REPORT.md`` (a table of every run's summary next to those keys), ``report.csv`` and, for every
numeric key that varies, plots of each metric against it, one line per combination of the other
varying keys and one panel per dataset.
"""

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import flatten, load_config

__all__ = [
    "METRICS",
    "PLOTTED",
    "Run",
    "collect_runs",
    "varying_keys",
    "table_rows",
    "plot_comparisons",
    "write_report",
]

METRICS = [
    ("test_accuracy", "test acc", "{:.4f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("num_params", "params", "{:d}"),
    ("train_time_s", "train s", "{:.1f}"),
    ("step_time_ms", "step ms", "{:.2f}"),
    ("memory_bytes", "temp MiB", "{:.2f}"),
    ("num_fevals", "NFE fwd", "{:.1f}"),
    ("backward_vjps", "VJPs bwd", "{:.1f}"),
    ("grad_flow", "grad ratio", "{:.3g}"),
]
"""(summary key, column title, format) of the report's table and CSV, in order."""
PLOTTED = ["test_accuracy", "step_time_ms", "memory_bytes", "num_fevals", "grad_flow"]
"""Metrics plotted against each numeric swept key."""
_IGNORED = {"sweep"}


@dataclasses.dataclass
class Run:
    """One run directory: its path, flattened config (dotted keys) and `summary.json`."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def collect_runs(dirs) -> list[Run]:
    """The runs in `dirs`: each a run directory or a directory of runs (a sweep, in its order)."""
    runs = []
    for d in map(Path, dirs):
        if _is_run(d):
            candidates = [d]
        elif (d / "sweep.json").is_file():
            names = [p["name"] for p in json.loads((d / "sweep.json").read_text())["points"]]
            candidates = [d / n for n in names if _is_run(d / n)]
        elif d.is_dir():
            candidates = sorted(p for p in d.iterdir() if _is_run(p))
        else:
            raise FileNotFoundError(f"{d}: no such directory")
        if not candidates:
            raise FileNotFoundError(f"{d}: neither a run directory nor a directory of runs")
        for run in candidates:
            cfg = dataclasses.asdict(load_config(run / "config.yaml"))
            summary_path = run / "summary.json"
            summary = (
                json.loads(summary_path.read_text())
                if summary_path.exists()
                else {"status": "unfinished"}
            )
            runs.append(Run(run, flatten(cfg), summary))
    return runs


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between runs (in config order)."""
    keys = [k for k in runs[0].config if k.split(".")[0] not in _IGNORED]
    return [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]


def _cell(key: str, fmt: str, value) -> str:
    if value is None:
        return "-"
    if key == "memory_bytes":
        value = value / 2**20
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def table_rows(runs: list[Run], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """The report table: a header and one row of formatted cells per run (`keys` first)."""
    header = ["run", *map(_short, keys), "status", *(title for _, title, _ in METRICS)]
    rows = []
    for r in runs:
        row = [r.path.name, *(str(r.config[k]) for k in keys), r.summary.get("status", "-")]
        row += [_cell(k, fmt, r.summary.get(k)) for k, _, fmt in METRICS]
        rows.append(row)
    return header, rows


def _markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_comparisons(runs: list[Run], keys: list[str], out: Path) -> list[Path]:
    """For each numeric varying key x and each metric: the metric against x, one line per
    combination of the other varying keys that has at least two values of x, one panel per
    dataset. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in runs if r.summary.get("status") == "finished"]
    datasets = sorted({r.config["data.name"] for r in done})
    written = []
    numeric = [
        k
        for k in keys
        if all(
            isinstance(r.config[k], int | float) and not isinstance(r.config[k], bool) for r in done
        )
    ]
    for x in numeric:
        others = [k for k in keys if k not in (x, "data.name")]
        for metric in PLOTTED:
            fig, axes = plt.subplots(
                1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False
            )
            drawn = False
            panels = []
            for name in datasets:
                lines: dict[tuple, list[tuple[float, float]]] = {}
                for r in done:
                    if r.config["data.name"] != name or r.summary.get(metric) is None:
                        continue
                    label = tuple((k, r.config[k]) for k in others)
                    lines.setdefault(label, []).append((r.config[x], r.summary[metric]))
                lines = {k: v for k, v in lines.items() if len({p[0] for p in v}) >= 2}
                panels.append((name, lines))
            # Label lines only by the keys that tell the drawn lines apart.
            labels = [label for _, lines in panels for label in lines]
            telling = [i for i in range(len(others)) if len({label[i][1] for label in labels}) > 1]
            for ax, (name, lines) in zip(axes[0], panels, strict=True):
                for label, pts in lines.items():
                    pts.sort()
                    text = ", ".join(f"{_short(label[i][0])}={label[i][1]}" for i in telling)
                    ax.plot(
                        [p[0] for p in pts], [p[1] for p in pts], marker="o", label=text or metric
                    )
                    drawn = True
                ax.set_title(name)
                ax.set_xlabel(_short(x))
                ax.set_ylabel(metric)
                if all(r.config[x] > 0 for r in done):
                    ax.set_xscale("log", base=2)
                if metric in ("memory_bytes", "grad_flow", "step_time_ms"):
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
            if drawn:
                handles, labels = axes[0][0].get_legend_handles_labels()
                for ax in axes[0][1:]:
                    h, lab = ax.get_legend_handles_labels()
                    handles += [hh for hh, ll in zip(h, lab, strict=False) if ll not in labels]
                    labels += [ll for ll in lab if ll not in labels]
                fig.legend(handles, labels, loc="outside right center", fontsize=7)
                fig.set_layout_engine("constrained")
                path = out / f"{metric}_vs_{_short(x)}.png"
                fig.savefig(path, dpi=100)
                written.append(path)
            plt.close(fig)
    return written


def write_report(dirs, out=None, *, title: str = "resode report", notes: str = "") -> Path:
    """Write ``REPORT.md``, ``report.csv`` and ``plots/`` for the runs in `dirs` into `out`
    (default: the first directory). Returns the path of ``REPORT.md``."""
    runs = collect_runs(dirs)
    out = Path(out) if out is not None else Path(dirs[0])
    (out / "plots").mkdir(parents=True, exist_ok=True)
    keys = varying_keys(runs) if len(runs) > 1 else []
    header, rows = table_rows(runs, keys)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "run", "status", *(k for k, _, _ in METRICS)])
        for r in runs:
            writer.writerow(
                [
                    *(r.config[k] for k in keys),
                    r.path.name,
                    r.summary.get("status"),
                    *(r.summary.get(k) for k, _, _ in METRICS),
                ]
            )
    plots = plot_comparisons(runs, keys, out / "plots")
    parts = [f"# {title}", ""]
    if notes:
        parts += [notes.strip(), ""]
    parts += [
        f"{len(runs)} runs; varying keys: {', '.join(keys) or 'none'}. Columns: test accuracy "
        "and loss, trainable parameters, training time (compilation included), median step "
        "time, XLA's peak temporary memory of the compiled training call, field evaluations "
        "per example forward and VJPs backward, and the gradient-norm ratio input/output of "
        "the body (a stack's gradient flow).",
        "",
        _markdown(header, rows),
        "",
    ]
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{p.stem}](plots/{p.name})" for p in plots]
        parts.append("")
    path = out / "REPORT.md"
    path.write_text("\n".join(parts))
    return path
