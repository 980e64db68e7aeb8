"""Sweeps: expand a config's ``sweep:`` block into points and run each as its own run directory.

The ``sweep:`` block maps dotted config keys to lists of values; the points are the grid product
of these axes, in the order written. Two special keys shape the grid:

- ``zip``: a mapping of keys to lists of equal length that move together (one axis), or a list
  of such mappings (several axes).
- ``union``: a list of sub-sweeps (each with the same syntax); their points are concatenated,
  and the result is crossed with the block's other axes. This is how one sweep holds differently
  shaped families (stacks over depth, DEQs over adjoints, ODE blocks over tolerances).

```yaml
sweep:
  data.name: [digits, mnist1d]
  union:
    - {model.body.kind: [plain, residual], model.body.num_steps: [1, 2, 4]}
    - model.body.kind: [deq]
      model.body.adjoint: [implicit, jfb]
    - zip: {model.body.scheme: [euler, rk4], model.body.tied: [true, true]}
```

Each point runs in ``SWEEP_DIR/<name>``, the name made from its values; a finished point is
skipped, so an interrupted sweep resumes where it stopped.
"""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config

__all__ = [
    "SWEEP_FILE",
    "POINT_FILE",
    "Sweep",
    "expand_sweep",
    "point_overrides",
    "point_names",
]

SWEEP_FILE = "sweep.json"
"""The file in a sweep's output directory that lists its points."""
POINT_FILE = "point.json"
"""The file in each point's run directory that records its values."""


def _axis(key: str, values, where: str) -> list[dict]:
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(f"{where}.{key}: must be a non-empty list of values, got {values!r}.")
    return [{key: v} for v in values]


def _zip_axis(group, where: str) -> list[dict]:
    if not isinstance(group, dict) or not group:
        raise ConfigError(f"{where}: must map keys to lists of equal length, got {group!r}.")
    lengths = {}
    for key, values in group.items():
        _axis(key, values, where)
        lengths[key] = len(values)
    if len(set(lengths.values())) != 1:
        sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise ConfigError(f"{where}: lists must have equal lengths to zip, got {sizes}.")
    n = next(iter(lengths.values()))
    return [{k: v[i] for k, v in group.items()} for i in range(n)]


def expand_sweep(spec: dict[str, Any], where: str = "sweep") -> list[dict[str, Any]]:
    """The points of a sweep block: a list of ``{dotted key: value}`` dicts (see module doc).

    Raises `ConfigError` naming the offending part (e.g. ``sweep.zip``) for a malformed block.
    """
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: must map dotted keys to lists of values, got {spec!r}.")
    axes: list[list[dict]] = []
    for key, value in spec.items():
        if key == "zip":
            groups = value if isinstance(value, list) else [value]
            axes += [_zip_axis(g, f"{where}.zip") for g in groups]
        elif key == "union":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{where}.union: must be a non-empty list of sub-sweeps.")
            points = []
            for i, sub in enumerate(value):
                points += expand_sweep(sub, f"{where}.union[{i}]")
            axes.append(points)
        else:
            axes.append(_axis(key, value, where))
    points = []
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def _format(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def point_overrides(point: dict[str, Any]) -> list[str]:
    """A point as ``key=value`` overrides."""
    return [f"{k}={_format(v)}" for k, v in point.items()]


def point_names(points: list[dict[str, Any]]) -> list[str]:
    """Directory names of the points: ``kind=plain,num_steps=4`` (the last part of each key,
    or the whole key where two keys end alike); unique (numbered if two points would clash)."""
    keys = list(dict.fromkeys(k for p in points for k in p))
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    label = {k: (k if short[k] in clashes else short[k]) for k in keys}
    names, seen = [], set()
    for p in points:
        name = ",".join(f"{label[k]}={_format(v)}" for k, v in p.items()) or "base"
        name = re.sub(r"[^A-Za-z0-9_.,=+-]", "-", name)
        base, i = name, 1
        while name in seen:
            i += 1
            name = f"{base}#{i}"
        seen.add(name)
        names.append(name)
    return names


def _is_main() -> bool:
    """Process 0 of a multi-process run (``--distributed``); always True in one process."""
    import jax

    return jax.process_index() == 0


class Sweep:
    """The points of a config's sweep, with their run directories under `out`.

    Every point's config is resolved (and so checked) up front: a typo in the sweep block or
    in a value fails before anything trains, naming the key.
    """

    def __init__(self, config_path, overrides: list[str], out):
        self.config_path = str(config_path)
        self.overrides = list(overrides)
        self.out = Path(out)
        base = load_config(config_path, overrides)
        if not base.sweep:
            raise ConfigError(
                f"sweep: {self.config_path!r} has no sweep block (add `sweep:` mapping dotted "
                "keys to lists of values)."
            )
        self.points = expand_sweep(base.sweep)
        self.names = point_names(self.points)
        self.configs: list[Config] = []
        for point in self.points:
            cfg = load_config(config_path, [*overrides, *point_overrides(point)])
            cfg.sweep = None  # a point is one run
            self.configs.append(cfg)

    def __len__(self) -> int:
        return len(self.points)

    def run_dir(self, index: int) -> Path:
        return self.out / self.names[index]

    def finished(self, index: int) -> bool:
        summary = self.run_dir(index) / "summary.json"
        if not summary.exists():
            return False
        return json.loads(summary.read_text()).get("status") == "finished"

    def command(self, index: int) -> str:
        """The shell command that runs point `index` alone (for array jobs on a cluster)."""
        import shlex

        args = ["resode", "sweep", self.config_path, *self.overrides]
        args += ["--out", str(self.out), "--index", str(index)]
        return " ".join(shlex.quote(a) for a in args)

    def write_manifest(self) -> None:
        if not _is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = {
            "config": self.config_path,
            "overrides": self.overrides,
            "points": [
                {"name": n, "values": p} for n, p in zip(self.names, self.points, strict=True)
            ],
        }
        tmp = self.out / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, self.out / SWEEP_FILE)

    def run_point(self, index: int, *, quiet: bool = False) -> dict:
        """Train point `index` (resuming it if it was interrupted). A point whose loss becomes
        non-finite is recorded as diverged in its summary and does not stop the sweep."""
        from .train import TrainingDiverged, train_run

        if not 0 <= index < len(self):
            raise ConfigError(f"--index: must be in [0, {len(self) - 1}], got {index}.")
        run_dir = self.run_dir(index)
        main = _is_main()  # with several processes (--distributed) only process 0 writes
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / POINT_FILE).write_text(json.dumps(self.points[index]) + "\n")
        try:
            return train_run(self.configs[index], run_dir, quiet=quiet)
        except TrainingDiverged as exc:
            summary = {"status": "diverged", "message": str(exc)}
            if main:
                (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            if not quiet and main:
                print(f"{run_dir}: {exc}", file=sys.stderr)
            return summary

    def run(self, *, jobs: int = 1, quiet: bool = False) -> list[int]:
        """Run every unfinished point (in `jobs` processes); returns the indices that ran."""
        self.write_manifest()
        todo = [i for i in range(len(self)) if not self.finished(i)]
        if not quiet:
            print(f"{self.out}: {len(self)} points, {len(self) - len(todo)} already finished.")
        if jobs <= 1:
            for n, i in enumerate(todo):
                if not quiet:
                    print(f"[{n + 1}/{len(todo)}] {self.names[i]}", flush=True)
                self.run_point(i, quiet=quiet)
            return todo
        procs: list[tuple[int, subprocess.Popen]] = []
        pending = list(todo)
        failed = []
        while pending or procs:
            while pending and len(procs) < jobs:
                i = pending.pop(0)
                cmd = [sys.executable, "-m", "resode.cli", "sweep", self.config_path]
                cmd += [*self.overrides, "--out", str(self.out), "--index", str(i), "--quiet"]
                procs.append((i, subprocess.Popen(cmd)))
            for item in list(procs):
                i, proc = item
                if proc.poll() is not None:
                    procs.remove(item)
                    if proc.returncode not in (0, 1):
                        failed.append(self.names[i])
            if procs:
                import time

                time.sleep(0.2)
        if failed:
            raise RuntimeError(f"sweep points failed: {', '.join(failed)}")
        return todo
