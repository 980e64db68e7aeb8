"""The ``resode`` command line.

- ``resode run CONFIG [key=value ...] [--out DIR]``: train and evaluate one model.
- ``resode sweep CONFIG [key=value ...] [--out DIR] [--jobs N] [--list] [--index I]``: every
  point of the config's ``sweep:`` block, one run directory each, then a report.
- ``resode report DIR [DIR ...] [--out DIR]``: a table, a CSV and plots comparing runs.
- ``resode experiment list | run NAME [key=value ...] [--out DIR] [--quick] | run --all [--quick]
  | gallery``: experiments that check their own claims (exit 1 when an exact check fails).
- ``resode bench [--quick] [--only NAME[,NAME]]``: the benchmarks of a source checkout, then
  one table of their headline ratios against the targets.

Exit status: 0 on success, 2 for a config or usage error (one line on stderr naming the key and
what is allowed, no traceback), 1 when training stops (a non-finite loss) or a checkpoint cannot
be read.
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path

from .config import ConfigError, load_config


def default_run_dir(config_path: str | Path | None, overrides: list[str]) -> Path:
    """``runs/<config name>`` followed by the overrides, e.g. ``runs/quickstart__train.lr=0.01``."""
    name = Path(config_path).stem if config_path else "default"
    if overrides:
        name += "__" + "_".join(overrides)
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)


def _initialize_distributed(args) -> None:
    """``jax.distributed.initialize`` with the command line's coordinator, process count and id;
    what is not given JAX takes from the environment (``JAX_COORDINATOR_ADDRESS``, SLURM, Open
    MPI)."""
    import jax

    given = {
        "coordinator_address": args.coordinator,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


def _distributed_arguments(parser, only: str = "") -> None:
    parser.add_argument(
        "--distributed",
        action="store_true",
        help=only + "call jax.distributed.initialize() first: one process per host trains one "
        "run, the batch sharded over every host's devices",
    )
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="with --distributed: the address of process 0 (default: JAX_COORDINATOR_ADDRESS or "
        "the cluster's)",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="with --distributed: the number of processes (default: from the cluster)",
    )
    parser.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="with --distributed: this process's id, 0 to N-1 (default: from the cluster)",
    )


def _run(args) -> int:
    from .train import CheckpointError, TrainingDiverged, train_run

    cfg = load_config(args.config, args.overrides)
    cfg.sweep = None  # a run is one point; `resode sweep` expands the block
    if args.distributed:
        _initialize_distributed(args)
    out = Path(args.out) if args.out else default_run_dir(args.config, args.overrides)
    try:
        train_run(cfg, out, quiet=args.quiet)
    except (TrainingDiverged, CheckpointError) as exc:
        print(f"resode run: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"results: {out}/summary.json, {out}/metrics.jsonl, plots in {out}/plots/")
    return 0


def _sweep(args) -> int:
    from .report import write_report
    from .sweep import Sweep, point_overrides

    out = Path(args.out) if args.out else default_run_dir(args.config, args.overrides)
    sweep = Sweep(args.config, args.overrides, out)
    if args.distributed and (args.index is None or args.list):
        raise ConfigError(
            "--distributed: a sweep runs one point over several processes; give --index I "
            "(one multi-process job per point, e.g. one array task each)."
        )
    if args.list:
        # One line per point: its index, its overrides, and the command that runs it alone
        # (tab-separated, so `cut -f3` gives the commands of an array job).
        for i in range(len(sweep)):
            values = " ".join(point_overrides(sweep.points[i]))
            print(f"{i}\t{values}\t{sweep.command(i)}")
        return 0
    if args.index is not None:
        if args.distributed:
            _initialize_distributed(args)
        sweep.write_manifest()
        summary = sweep.run_point(args.index, quiet=args.quiet)
        return 0 if summary.get("status") in ("finished",) else 1
    sweep.run(jobs=args.jobs, quiet=args.quiet)
    report = write_report([out])
    if not args.quiet:
        print(f"report: {report}, {out}/report.csv, plots in {out}/plots/")
    return 0


def _report(args) -> int:
    from .report import write_report

    try:
        path = write_report(args.dirs, args.out)
    except FileNotFoundError as exc:
        print(f"resode report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def _experiment(args) -> int:
    from .experiments import (
        list_experiments,
        load_experiment,
        run_experiment,
        verdict,
        write_gallery,
    )

    if args.action == "list":
        for name in list_experiments():
            print(f"{name}\t{load_experiment(name).CLAIM}")
        return 0
    if args.action == "gallery":
        print(f"gallery: {write_gallery()}")
        return 0
    overrides = list(args.overrides or [])
    if args.all:
        if args.name is not None or overrides:
            raise ConfigError(
                "--all runs every experiment with its own config; give no NAME and no key=value."
            )
        base = Path(args.out) if args.out else Path("runs") / "experiments"
        rows, failed = [], []
        for name in list_experiments():
            summary = run_experiment(name, out=base / name, quick=args.quick, quiet=args.quiet)
            if not summary["all_exact_hold"]:
                failed.append(name)
            for c in summary["checks"]:
                rows.append([name, c["name"], c["kind"], "yes" if c["holds"] else "NO"])
            if not args.quiet:
                print(f"{name}: {verdict(summary)} ({summary['runtime_s']:.1f} s)", flush=True)
        width = [
            max(len(r[i]) for r in rows + [["experiment", "check", "kind", "holds"]])
            for i in range(4)
        ]
        print()
        for r in [["experiment", "check", "kind", "holds"], *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(r, width, strict=True)).rstrip())
        if failed:
            print(f"exact checks failed in: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    if args.name is None:
        raise ConfigError(
            "experiment run: name an experiment (see `resode experiment list`) or give --all."
        )
    summary = run_experiment(args.name, overrides, args.out, quick=args.quick, quiet=args.quiet)
    out = Path(args.out) if args.out else Path("runs") / "experiments" / args.name
    if not args.quiet:
        for c in summary["checks"]:
            print(f"  [{'holds' if c['holds'] else 'FAILS'}] {c['kind']:9s} {c['name']}")
        print(f"{args.name}: {verdict(summary)}; report: {out}/REPORT.md")
    if not summary["all_exact_hold"]:
        print(f"resode experiment: an exact check of {args.name} failed (a bug)", file=sys.stderr)
        return 1
    return 0


#: `resode bench` names -> scripts in the checkout's benchmarks/ (run in this order).
BENCHES = {
    "rk": "bench_rk",
    "implicit": "bench_implicit",
    "fixed_point": "bench_fixed_point",
    "layers": "bench_layers",
    "ode": "bench_ode",
    "train": "bench_train",
}

#: The heading of each benchmark's section in the report `resode bench --write` writes.
BENCH_TITLES = {
    "rk": "Fixed-step explicit solves",
    "implicit": "Implicit schemes on a stiff problem",
    "fixed_point": "Deep-equilibrium fixed point",
    "layers": "Layers: compile time, training step, memory and time against depth",
    "ode": "Adaptive ODE block against diffrax",
    "train": "Training loop",
}


def _bench(args) -> int:
    import importlib

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (bench_dir / "_harness.py").is_file():
        print(
            f"resode bench: no benchmarks/ next to the package ({bench_dir}); run it from a "
            "source checkout (pip install -e .)",
            file=sys.stderr,
        )
        return 2
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            raise ConfigError(
                f"--only: unknown benchmark {unknown[0]!r}; choose from: {', '.join(BENCHES)}."
            )
    sys.path.insert(0, str(bench_dir))
    harness = importlib.import_module("_harness")
    start = len(harness.RATIOS)
    began = time.perf_counter()
    sections = []
    for name in names:
        print(f"\n## {name} ({BENCHES[name]}.py)\n", flush=True)
        text = importlib.import_module(BENCHES[name]).main(quick=args.quick)
        print(text, flush=True)
        sections.append(f"## {BENCH_TITLES[name]} (`benchmarks/{BENCHES[name]}.py`)\n\n{text}")
    minutes = (time.perf_counter() - began) / 60
    rows = []
    for r in harness.RATIOS[start:]:
        target = f"{r.op} {r.target:g}" if r.target is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        rows.append([r.bench, r.name, f"{r.value:.3g}", target, met])
    table = harness.markdown_table(["bench", "ratio", "value", "target", "met"], rows)
    quick = " (--quick: tiny sizes, not meaningful)" if args.quick else ""
    print("\n## Headline ratios" + quick)
    print()
    print(table)
    if args.write:
        command = "resode bench" + (" --quick" if args.quick else "")
        command += f" --only {','.join(names)}" if args.only else ""
        head = (
            f"# Benchmark results{quick}\n\n"
            f"Written by `{command} --write` in one process ({minutes:.0f} min). Every figure "
            "comes from this one run: contenders take turns call by call (warm-up first, "
            "`block_until_ready`, each timed call right after an untimed one of the same "
            "contender, median of repeated calls with min and max), and ratios compare "
            "contenders within the run.\n\n"
            f"Machine: {harness.machine_summary()}\n\n## Headline ratios\n\n{table}\n"
        )
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(head + "".join(f"\n{s.rstrip()}\n" for s in sections))
        print(f"\nwrote {path}")
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
    _distributed_arguments(run)
    run.set_defaults(func=_run)

    sweep = sub.add_parser(
        "sweep",
        help="run every point of a config's sweep block",
        description="Run each point of CONFIG's `sweep:` block in its own run directory under "
        "--out (finished points are skipped, so an interrupted sweep resumes), then write "
        "REPORT.md, report.csv and plots/ there.",
    )
    sweep.add_argument("config", help="a YAML config with a `sweep:` block")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides applied to every point")
    sweep.add_argument("--out", help="sweep directory (default: runs/<config name>[__overrides])")
    sweep.add_argument("--jobs", type=int, default=1, help="points run at once (processes)")
    sweep.add_argument(
        "--list", action="store_true", help="print one command per point (for array jobs)"
    )
    sweep.add_argument("--index", type=int, help="run point I only (0-based; see --list)")
    sweep.add_argument("--quiet", action="store_true", help="no messages and no progress bars")
    _distributed_arguments(sweep, "with --index: ")
    sweep.set_defaults(func=_sweep)

    report = sub.add_parser(
        "report",
        help="compare finished runs",
        description="Write REPORT.md, report.csv and plots/ comparing run directories (or sweep "
        "directories of runs).",
    )
    report.add_argument("dirs", nargs="+", help="run or sweep directories")
    report.add_argument("--out", help="where to write (default: the first directory)")
    report.set_defaults(func=_report)

    experiment = sub.add_parser(
        "experiment",
        help="list, run and collect the experiments (claims that check themselves)",
        description="Experiments live in experiments/<name>/ of the checkout. Exit status of run: "
        "0 when every exact check holds (whatever the empirical claims found), 1 when an exact "
        "check fails, 2 for a config or usage error.",
    )
    actions = experiment.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="one line per experiment: its name and its claim")
    actions.add_parser(
        "gallery", help="regenerate experiments/README.md from the committed summaries"
    )
    exp_run = actions.add_parser(
        "run",
        help="run one experiment (or --all)",
        description="Run experiment NAME with key=value overrides of its config (any order with "
        "the options) into --out (default runs/experiments/NAME): config.yaml, summary.json, "
        "REPORT.md and plots/.",
    )
    exp_run.add_argument("name", nargs="?", help="the experiment (see `resode experiment list`)")
    exp_run.add_argument("overrides", nargs="*", help="key=value overrides of its config")
    exp_run.add_argument(
        "--out", help="run directory (with --all: the parent of one per experiment)"
    )
    exp_run.add_argument("--quick", action="store_true", help="a reduced run (seconds; for tests)")
    exp_run.add_argument("--all", action="store_true", help="run every experiment, then a table")
    exp_run.add_argument("--quiet", action="store_true", help="no progress messages")
    experiment.set_defaults(func=_experiment)

    bench = sub.add_parser(
        "bench",
        help="run the benchmarks and print their ratios",
        description="Run the scripts in benchmarks/ (resode against hand-written JAX, diffrax, "
        "optimistix and torchdiffeq; install the peers with `pip install -e .[bench]`) and "
        "print one table of headline ratios against their targets.",
    )
    bench.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    bench.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    bench.add_argument(
        "--write",
        metavar="FILE",
        help="also write the run as a markdown report (machine, headline ratios, every "
        "benchmark's tables), e.g. benchmarks/RESULTS.md",
    )
    bench.set_defaults(func=_bench)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse `argv`, accepting ``key=value`` overrides anywhere, before or after options.

    argparse stops filling a positional list at the first option, so ``CONFIG --out DIR
    train.steps=30`` would leave ``train.steps=30`` unrecognised; such leftovers are overrides
    (appended in order). Anything else left over is a usage error (exit 2).
    """
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    return args


#: jaxlib series whose XLA was checked to know ``--xla_cpu_use_fusion_emitters`` (0.6 to 0.10; 0.5
#: does not). XLA aborts on a flag it does not know, so other versions go without it.
_FUSION_EMITTERS_FLAG_SERIES = ((0, 6), (0, 11))


def _quick_xla_flags(jaxlib_version: str | None) -> tuple[str, ...]:
    """The flags of `QUICK_XLA_FLAGS` for a jaxlib of `jaxlib_version` (None: not installed)."""
    flags = ("--xla_backend_optimization_level=0",)
    series = tuple(int(p) for p in re.findall(r"\d+", jaxlib_version or "")[:2])
    low, high = _FUSION_EMITTERS_FLAG_SERIES
    if len(series) == 2 and low <= series < high:
        flags += ("--xla_cpu_use_fusion_emitters=false",)
    return flags


def _jaxlib_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


#: XLA flags for compile-bound processes (command-line ``--quick`` experiment runs, the test
#: suite): backend (LLVM) optimisation level 0 and, where this jaxlib knows the flag, XLA:CPU's
#: elemental emitters instead of its MLIR fusion emitters (they compile in about half the time
#: and run slower).
QUICK_XLA_FLAGS = _quick_xla_flags(_jaxlib_version())


def quick_compile_flags() -> None:
    """Add each of `QUICK_XLA_FLAGS` to ``XLA_FLAGS`` unless ``XLA_FLAGS`` already sets it.

    A ``--quick`` experiment run is compile-bound (several small trainings, each compiled once
    and run for a few dozen steps). Measured on 2 CPU cores: level 0 takes the degradation quick
    run from 14 s to 9 s (2026-11-24); the elemental emitters then halve XLA's compile time
    again (degradation 7.1 -> 3.1 s of compilation; quick runs of anode 18.8 -> 14.4 s,
    reversible_memory 18.3 -> 12.0 s, unet_skips 15.4 -> 11.5 s, 2026-12-05), while a compiled
    loop runs slower (a 256 x 64 fixed-point iteration 42 -> 103 us). Figures agree with a
    default compile to float32 rounding (LLVM contracts and orders floating-point operations
    differently). XLA reads the flags when it starts its first backend, so they must be set
    before any computation: `main` does so only when it parses the process's own command line
    (`argv` None); in a process that has already computed (a test calling `main([...])`) they
    would have no effect. Full runs and benchmarks keep XLA's defaults.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in QUICK_XLA_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if argv is None and args.command == "experiment" and getattr(args, "quick", False):
        quick_compile_flags()
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except ConfigError as exc:
        print(f"resode {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `resode sweep CFG --list | head`): stop quietly. Point
        # stdout at devnull so that the interpreter's final flush does not raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
