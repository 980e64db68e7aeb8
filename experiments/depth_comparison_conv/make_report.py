"""Write REPORT.md, report.csv and plots/ of the convolutional depth study from its sweep directory.

Run after the sweep (see README.md here):

    resode sweep configs/depth_comparison_conv.yaml --out experiments/depth_comparison_conv/runs
    python experiments/depth_comparison_conv/make_report.py [RUNS_DIR]

Every body has the same parameter budget at every depth d: an untied ResNet has d fields of 64 / d
hidden channels; the tied Euler and tied implicit stacks run one field of 64 hidden channels for d
steps; the DEQ has that field and no depth. Each cell is the mean over the seeds, with the seeds'
values beside it. The findings at the top of the report are computed from the runs.
"""

import os
import statistics
import sys
from pathlib import Path

from resode.experiments import machine
from resode.report import collect_runs, write_report

HERE = Path(__file__).resolve().parent
DEQ = "DEQ (Anderson, implicit adjoint; no depth)"
KINDS = {
    "untied Euler ResNet": lambda c: (
        c["model.body.kind"] == "residual" and not c["model.body.tied"]
    ),
    "tied Euler (one field)": lambda c: c["model.body.kind"] == "residual" and c["model.body.tied"],
    "tied implicit backward Euler": lambda c: c["model.body.kind"] == "implicit",
    DEQ: lambda c: c["model.body.kind"] == "deq",
}
METRICS = {
    "test_accuracy": ("test accuracy", ".3f"),
    "num_params": ("parameters", "d"),
    "step_time_ms": ("median step time (ms)", ".1f"),
    "memory_bytes": ("training-call temporary memory (MiB)", ".2f"),
    "num_fevals": ("forward field evaluations per example", ".1f"),
    "backward_vjps": ("backward VJPs per example", ".1f"),
    "fraction_converged": ("fraction of test examples whose solves converged", ".3f"),
}


def depth_of(config) -> int | None:
    """The study's depth d: the step count of a stack; None for the DEQ (it has no depth)."""
    if config["model.body.kind"] == "deq":
        return None
    return int(config["model.body.num_steps"])


def table(runs):
    """{kind: {depth: [summary per seed]}} of the finished runs (the DEQ under depth None)."""
    out = {k: {} for k in KINDS}
    for r in runs:
        if r.summary.get("status") != "finished":
            continue
        for kind, match in KINDS.items():
            if match(r.config):
                out[kind].setdefault(depth_of(r.config), []).append(r.summary)
    return out


def _values(summaries, key) -> list[float]:
    vals = [s.get(key) for s in summaries or []]
    vals = [v for v in vals if v is not None]
    return [v / 2**20 for v in vals] if key == "memory_bytes" else vals


def _mean(summaries, key):
    vals = _values(summaries, key)
    return statistics.fmean(vals) if vals else None


def _cell(summaries, key, spec) -> str:
    vals = _values(summaries, key)
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    mean = format(round(mean) if spec == "d" else mean, spec)
    if len(vals) == 1 or key not in ("test_accuracy", "fraction_converged"):
        return mean
    return f"{mean} ({' / '.join(format(v, spec) for v in vals)})"


def plots(t, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    depths = sorted({d for rows in t.values() for d in rows if d is not None})
    for key, (label, _) in METRICS.items():
        if key == "num_params":
            continue
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        for kind, rows in t.items():
            if kind == DEQ:
                m = _mean(rows.get(None), key)
                if m is not None and depths:
                    ax.axhline(m, color="k", linestyle="--", linewidth=1, label=kind)
                continue
            ds = [d for d in sorted(rows) if _values(rows[d], key)]
            if not ds:
                continue
            (line,) = ax.plot(ds, [_mean(rows[d], key) for d in ds], marker="o", label=kind)
            for d in ds:  # every seed, as a dot
                vals = _values(rows[d], key)
                ax.scatter([d] * len(vals), vals, s=10, color=line.get_color(), alpha=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth d (same parameters at every d)")
        ax.set_ylabel(label)
        if key in ("step_time_ms", "memory_bytes", "num_fevals", "backward_vjps"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.set_layout_engine("constrained")
        path = out / f"study_{key}_vs_depth.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def findings(t) -> str:
    depths = sorted({d for rows in t.values() for d in rows if d is not None})
    seeds = max((len(v) for rows in t.values() for v in rows.values()), default=0)
    lines = [
        "## Findings (computed from the runs below)",
        "",
        f"Each cell: the mean over {seeds} seeds (for accuracy, each seed's value in brackets). "
        "The DEQ has no depth; its value is in the last column.",
        "",
    ]
    header = "| body | " + " | ".join(f"d = {d}" for d in depths) + " | no depth |"
    for key, (label, spec) in METRICS.items():
        lines += [f"**{label}**", "", header, "|---" * (len(depths) + 2) + "|"]
        for kind, rows in t.items():
            cells = [_cell(rows.get(d), key, spec) for d in depths] + [
                _cell(rows.get(None), key, spec)
            ]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    acc = {
        (kind, d): _mean(v, "test_accuracy")
        for kind, rows in t.items()
        for d, v in rows.items()
        if _values(v, "test_accuracy")
    }
    if acc:
        (kind, d), a = max(acc.items(), key=lambda kv: kv[1])
        where = "no depth" if d is None else f"d = {d}"
        lines.append(
            f"- Best mean test accuracy: {a:.3f} ({kind}, {where}); the published MNIST-1D CNN "
            "baseline is about 0.94 (Greydanus, 2020, with far longer training)."
        )
    for kind, rows in t.items():
        ds = sorted(d for d in rows if d is not None)
        if len(ds) >= 2:
            a0, a1 = _mean(rows[ds[0]], "test_accuracy"), _mean(rows[ds[-1]], "test_accuracy")
            lines.append(
                f"- {kind}: mean test accuracy {a0:.3f} at d = {ds[0]} -> {a1:.3f} at "
                f"d = {ds[-1]} ({a1 - a0:+.3f})."
            )
    lines.append("")
    return "\n".join(lines)


def _relative(path: Path) -> str:
    """`path` relative to the working directory (reports never name a machine's absolute paths)."""
    return os.path.relpath(Path(path).resolve(), Path.cwd().resolve())


def main(runs_dir: Path) -> Path:
    runs = collect_runs([runs_dir])
    t = table(runs)
    (HERE / "plots").mkdir(parents=True, exist_ok=True)
    paths = plots(t, HERE / "plots")
    notes = (
        f"Machine and date: {machine()}. Generated by "
        "`experiments/depth_comparison_conv/make_report.py` from "
        f"`{_relative(runs_dir)}` (configs/depth_comparison_conv.yaml).\n\n"
        + findings(t)
        + "\n"
        + "\n".join(f"![{p.stem}](plots/{p.name})" for p in paths)
        + "\n"
    )
    return write_report(
        [runs_dir], HERE, title="Explicit vs implicit depth, convolutional", notes=notes
    )


if __name__ == "__main__":
    runs_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs"
    print(main(runs_dir))
