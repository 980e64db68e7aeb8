"""The ``resode`` command line: ``resode run CONFIG [key=value ...] [--out DIR]``.

Exit status: 0 on success, 2 for a config or usage error (one line on stderr naming the key and
what is allowed, no traceback), 1 when training stops (a non-finite loss) or a checkpoint cannot
be read.
"""

import argparse
import re
import sys
from pathlib import Path

from .config import ConfigError, load_config


def default_run_dir(config_path: str | Path | None, overrides: list[str]) -> Path:
    """``runs/<config name>`` followed by the overrides, e.g. ``runs/quickstart__train.lr=0.01``."""
    name = Path(config_path).stem if config_path else "default"
    if overrides:
        name += "__" + "_".join(overrides)
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)


def _run(args) -> int:
    from .train import CheckpointError, TrainingDiverged, train_run

    cfg = load_config(args.config, args.overrides)
    if args.distributed:
        import jax

        jax.distributed.initialize()
    out = Path(args.out) if args.out else default_run_dir(args.config, args.overrides)
    try:
        train_run(cfg, out, quiet=args.quiet)
    except (TrainingDiverged, CheckpointError) as exc:
        print(f"resode run: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"results: {out}/summary.json, {out}/metrics.jsonl, plots in {out}/plots/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resode", description="Residual networks as ODE solvers: run experiments."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="train and evaluate one model",
        description="Train and evaluate the model of CONFIG (YAML) with key=value overrides; "
        "rerunning on the same --out directory resumes from its last checkpoint.",
    )
    run.add_argument("config", help="a YAML config (see configs/)")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=200")
    run.add_argument("--out", help="run directory (default: runs/<config name>[__overrides])")
    run.add_argument("--quiet", action="store_true", help="no messages and no progress bar")
    run.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host data parallelism)",
    )
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"resode {args.command}: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
