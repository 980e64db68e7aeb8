"""Write REPORT.md, report.csv and plots/ of the convolutional depth study from its sweep directory.

Run after the sweep (see README.md here):

    resode sweep configs/depth_comparison_conv.yaml --out experiments/depth_comparison_conv/runs
    python experiments/depth_comparison_conv/make_report.py [RUNS_DIR]

Every body at "depth" d has the same parameter count: an untied ResNet has d fields of 16 hidden
channels; the tied, implicit and DEQ bodies have one field of 16 d hidden channels. The findings at
the top of the report are computed from the runs.
"""

import os
import platform
import sys
from datetime import date
from pathlib import Path

import jax

from resode.report import collect_runs, write_report

HERE = Path(__file__).resolve().parent
BASE_HIDDEN = 16
KINDS = {
    "untied Euler ResNet": lambda c: (
        c["model.body.kind"] == "residual" and not c["model.body.tied"]
    ),
    "tied Euler (one field)": lambda c: c["model.body.kind"] == "residual" and c["model.body.tied"],
    "implicit backward Euler": lambda c: c["model.body.kind"] == "implicit",
    "DEQ (Anderson, implicit adjoint)": lambda c: c["model.body.kind"] == "deq",
}
METRICS = {
    "test_accuracy": ("test accuracy", ".3f"),
    "num_params": ("parameters", "d"),
    "step_time_ms": ("median step time (ms)", ".1f"),
    "memory_bytes": ("training-call temporary memory (MiB)", ".2f"),
    "num_fevals": ("forward field evaluations per example", ".1f"),
    "backward_vjps": ("backward VJPs per example", ".1f"),
}


def depth_of(config) -> int:
    """The study's depth d: the step count of stacks, hidden / 16 for a DEQ (same parameters)."""
    if config["model.body.kind"] == "deq":
        return int(config["model.body.hidden"]) // BASE_HIDDEN
    return int(config["model.body.num_steps"])


def table(runs):
    """{kind: {depth: summary}} of the finished runs."""
    out = {k: {} for k in KINDS}
    for r in runs:
        if r.summary.get("status") != "finished":
            continue
        for kind, match in KINDS.items():
            if match(r.config):
                out[kind][depth_of(r.config)] = r.summary
    return out


def _value(summary, key):
    v = summary.get(key) if summary else None
    if key == "memory_bytes" and v is not None:
        v = v / 2**20
    return v


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def plots(t, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, (label, _) in METRICS.items():
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        for kind, rows in t.items():
            ds = sorted(d for d in rows if _value(rows[d], key) is not None)
            if ds:
                ax.plot(ds, [_value(rows[d], key) for d in ds], marker="o", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth d (same parameters at each d)")
        ax.set_ylabel(label)
        if key in ("step_time_ms", "memory_bytes"):
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
    depths = sorted({d for rows in t.values() for d in rows})
    lines = ["## Findings (computed from the runs below)", ""]
    header = "| body | " + " | ".join(f"d = {d}" for d in depths) + " |"
    for key, (label, spec) in METRICS.items():
        lines += [f"**{label}**", "", header, "|---" * (len(depths) + 1) + "|"]
        for kind, rows in t.items():
            lines.append(
                f"| {kind} | "
                + " | ".join(_fmt(_value(rows.get(d), key), spec) for d in depths)
                + " |"
            )
        lines.append("")
    best = max(
        ((kind, d, s["test_accuracy"]) for kind, rows in t.items() for d, s in rows.items()),
        key=lambda x: x[2],
        default=None,
    )
    if best:
        lines.append(
            f"- Best test accuracy: {best[2]:.3f} ({best[0]}, d = {best[1]}); the published "
            "MNIST-1D CNN baseline is about 0.94 (Greydanus, 2020)."
        )
    for kind, rows in t.items():
        ds = sorted(rows)
        if len(ds) >= 2:
            a0, a1 = rows[ds[0]]["test_accuracy"], rows[ds[-1]]["test_accuracy"]
            conv = [rows[d].get("fraction_converged") for d in ds]
            extra = ""
            if any(c is not None and c < 1 for c in conv):
                extra = ", solver converged on " + " / ".join(_fmt(c, ".2f") for c in conv)
            lines.append(
                f"- {kind}: test accuracy {a0:.3f} at d = {ds[0]} -> {a1:.3f} at d = {ds[-1]} "
                f"({a1 - a0:+.3f}){extra}."
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
    machine = (
        f"{date.today().isoformat()}; {jax.device_count()} x {jax.devices()[0].device_kind}; "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores; jax {jax.__version__}"
    )
    notes = (
        f"Machine and date: {machine}. Generated by "
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
