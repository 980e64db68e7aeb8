"""PNG plots of one run from its ``metrics.jsonl``: loss, accuracy, and NFE over training."""

import json
from pathlib import Path


def _series(rows, split, key):
    pts = [(r["step"], r[key]) for r in rows if r["split"] == split and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir) -> list[Path]:
    """Write ``plots/loss.png``, ``plots/accuracy.png`` (classification) and ``plots/nfe.png``
    from the run's metrics; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    panels = [
        ("loss.png", "loss", [("train", "loss", "train"), ("test", "test_loss", "test")], True),
        (
            "accuracy.png",
            "accuracy",
            [("train", "accuracy", "train"), ("test", "test_accuracy", "test")],
            False,
        ),
        (
            "nfe.png",
            "function evaluations per example (forward)",
            [("train", "num_fevals", "train"), ("test", "test_num_fevals", "test (eval mode)")],
            False,
        ),
    ]
    written = []
    for name, ylabel, series, log in panels:
        data = [(label, *_series(rows, split, key)) for split, key, label in series]
        if not any(xs for _, xs, _ in data):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
        for label, xs, ys in data:
            if xs:
                ax.plot(xs, ys, label=label, marker="o" if label.startswith("test") else None)
        if log and all(y > 0 for _, _, ys in data for y in ys):
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(run_dir.name, fontsize=9)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
