"""Write REPORT.md, report.csv and plots/ of the depth study from its sweep directory.

Run after the sweep (see README.md here):

    resode sweep configs/depth_comparison.yaml --out experiments/depth_comparison/runs
    python experiments/depth_comparison/make_report.py [RUNS_DIR]

The findings at the top of the report are computed from the runs, so they restate whatever the
numbers show.
"""

import os
import sys
from pathlib import Path

from resode.experiments import machine
from resode.report import collect_runs, write_report

HERE = Path(__file__).resolve().parent


def _pick(runs, dataset, **config):
    """The summary of the run on `dataset` whose config matches `config` (short keys)."""
    for r in runs:
        c = r.config
        if c["data.name"] != dataset:
            continue
        if all(c[f"model.body.{k}"] == v for k, v in config.items()):
            return r.summary
    return None


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def findings(runs) -> str:
    lines = ["## Findings (computed from the runs below)", ""]
    depths = sorted({r.config["model.body.num_steps"] for r in runs})
    deep = max(depths)
    for ds in sorted({r.config["data.name"] for r in runs}):
        lines.append(f"**{ds}**")
        lines.append("")
        acc = {}
        for kind in ("plain", "residual"):
            acc[kind] = [
                _pick(runs, ds, kind=kind, tied=False, scheme="euler", num_steps=d) for d in depths
            ]
        lines.append(
            "- Test accuracy against depth "
            + ", ".join(str(d) for d in depths)
            + ": plain "
            + " / ".join(_fmt(s and s.get("test_accuracy")) for s in acc["plain"])
            + "; untied Euler ResNet "
            + " / ".join(_fmt(s and s.get("test_accuracy")) for s in acc["residual"])
            + "."
        )
        gp = [s and s.get("grad_flow") for s in acc["plain"]]
        gr = [s and s.get("grad_flow") for s in acc["residual"]]
        g = lambda v: _fmt(v, ".3g")
        lines.append(
            f"- Gradient-norm ratio (body input / output) at depth {deep}: plain {g(gp[-1])}, "
            f"ResNet {g(gr[-1])} (depth 1: {g(gp[0])} and {g(gr[0])})."
        )
        mem = {}
        for label, cfg in [
            ("untied Euler", dict(kind="residual", tied=False, scheme="euler")),
            ("tied Euler", dict(kind="residual", tied=True, scheme="euler")),
            ("tied RK4", dict(kind="residual", tied=True, scheme="rk4")),
        ]:
            lo, hi = _pick(runs, ds, num_steps=1, **cfg), _pick(runs, ds, num_steps=deep, **cfg)
            if lo and hi and lo.get("memory_bytes") and hi.get("memory_bytes"):
                mem[label] = (lo["memory_bytes"], hi["memory_bytes"], hi.get("test_accuracy"))
        lines.append(
            f"- Peak temporary memory of the training call, 1 -> {deep} steps: "
            + "; ".join(
                f"{k} {a / 2**20:.2f} -> {b / 2**20:.2f} MiB ({b / a:.1f}x)"
                for k, (a, b, _) in mem.items()
            )
            + "."
        )
        deqs = [
            (adj, _pick(runs, ds, kind="deq", adjoint=adj))
            for adj in ("implicit", "phantom", "jfb")
        ]
        lines.append(
            "- DEQ (implicit / phantom / JFB adjoint): test accuracy "
            + " / ".join(_fmt(s and s.get("test_accuracy")) for _, s in deqs)
            + ", memory "
            + " / ".join(
                _fmt(s and s.get("memory_bytes") and s["memory_bytes"] / 2**20, ".2f")
                for _, s in deqs
            )
            + " MiB, forward NFE "
            + " / ".join(_fmt(s and s.get("num_fevals"), ".1f") for _, s in deqs)
            + ", backward VJPs "
            + " / ".join(_fmt(s and s.get("backward_vjps"), ".1f") for _, s in deqs)
            + "."
        )
        odes = [
            r.summary
            for r in runs
            if r.config["data.name"] == ds and r.config["model.body.kind"] == "ode"
        ]
        lines.append(
            "- Adaptive ODE block (rtol 1e-2 / 1e-4): test accuracy "
            + " / ".join(_fmt(s.get("test_accuracy")) for s in odes)
            + ", forward NFE "
            + " / ".join(_fmt(s.get("num_fevals"), ".1f") for s in odes)
            + ", step time "
            + " / ".join(_fmt(s.get("step_time_ms"), ".1f") for s in odes)
            + " ms."
        )
        imp = [
            (sch, _pick(runs, ds, kind="implicit", scheme=sch, num_steps=d))
            for sch in ("backward_euler", "trapezoid")
            for d in (1, 8)
        ]
        lines.append(
            "- Implicit stacks (backward Euler 1 / 8 steps, trapezoid 1 / 8): test accuracy "
            + " / ".join(_fmt(s and s.get("test_accuracy")) for _, s in imp)
            + ", forward NFE "
            + " / ".join(_fmt(s and s.get("num_fevals"), ".1f") for _, s in imp)
            + ", backward VJPs "
            + " / ".join(_fmt(s and s.get("backward_vjps"), ".1f") for _, s in imp)
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def _relative(path: Path) -> str:
    """`path` relative to the working directory (reports never name a machine's absolute paths)."""
    return os.path.relpath(Path(path).resolve(), Path.cwd().resolve())


def main(runs_dir: Path) -> Path:
    runs = collect_runs([runs_dir])
    notes = (
        f"Machine and date: {machine()}. Generated by "
        f"`experiments/depth_comparison/make_report.py` from `{_relative(runs_dir)}` "
        "(configs/depth_comparison.yaml).\n\n" + findings(runs)
    )
    return write_report([runs_dir], HERE, title="Explicit vs implicit depth", notes=notes)


if __name__ == "__main__":
    runs_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs"
    print(main(runs_dir))
