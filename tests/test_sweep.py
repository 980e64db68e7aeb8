"""`resode sweep` and `resode report`: grid expansion, cluster indexing, resume, reports."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resode.cli import main
from resode.config import ConfigError, load_config
from resode.report import collect_runs, varying_keys
from resode.sweep import Sweep, expand_sweep, point_names

REPO = Path(__file__).parents[1]
TINY = """
data: {name: digits, batch_size: 64}
model: {width: 8}
train: {steps: 10, steps_per_call: 5, checkpoint_every: 10, lr: 0.01}
eval: {every: 10}
"""


def _config(tmp_path, sweep: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(TINY + "sweep:\n" + sweep)
    return path


def test_grid_product_in_written_order():
    points = expand_sweep({"a.x": [1, 2], "b.y": ["u", "v", "w"]})
    assert points == [
        {"a.x": 1, "b.y": "u"},
        {"a.x": 1, "b.y": "v"},
        {"a.x": 1, "b.y": "w"},
        {"a.x": 2, "b.y": "u"},
        {"a.x": 2, "b.y": "v"},
        {"a.x": 2, "b.y": "w"},
    ]


def test_zip_moves_keys_together_and_crosses_the_rest():
    points = expand_sweep({"zip": {"r": [1, 2], "a": [10, 20]}, "s": [0, 1]})
    assert points == [
        {"r": 1, "a": 10, "s": 0},
        {"r": 1, "a": 10, "s": 1},
        {"r": 2, "a": 20, "s": 0},
        {"r": 2, "a": 20, "s": 1},
    ]
    with pytest.raises(ConfigError, match=r"sweep\.zip: .*equal lengths.*r: 2, a: 3"):
        expand_sweep({"zip": {"r": [1, 2], "a": [1, 2, 3]}})


def test_union_concatenates_sub_sweeps_and_crosses_outer_axes():
    spec = {"d": ["p", "q"], "union": [{"k": ["x"], "n": [1, 2]}, {"k": ["y"], "adj": ["i"]}]}
    points = expand_sweep(spec)
    assert points == [
        {"d": "p", "k": "x", "n": 1},
        {"d": "p", "k": "x", "n": 2},
        {"d": "p", "k": "y", "adj": "i"},
        {"d": "q", "k": "x", "n": 1},
        {"d": "q", "k": "x", "n": 2},
        {"d": "q", "k": "y", "adj": "i"},
    ]
    with pytest.raises(ConfigError, match=r"sweep\.union\[1\]\.n: must be a non-empty list"):
        expand_sweep({"union": [{"n": [1]}, {"n": 3}]})


def test_point_names_are_short_unique_and_readable():
    points = [{"model.body.kind": "deq", "model.body.tol": 1e-4}, {"a.tol": 1, "b.tol": 2}]
    names = point_names(points)
    assert names[0] == "kind=deq,model.body.tol=0.0001"
    assert names[1] == "a.tol=1,b.tol=2"
    assert point_names([{"x": 1}, {"x": 1}]) == ["x=1", "x=1#2"]


def test_bad_values_fail_before_anything_runs(tmp_path, capsys):
    cfg = _config(tmp_path, "  model.body.scheme: [euler, rk5]\n")
    code = main(["sweep", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "model.body.scheme" in err and "rk5" in err
    assert not (tmp_path / "out").exists()
    code = main(["sweep", "configs/quickstart.yaml", "--out", str(tmp_path / "o2")])
    assert code == 2 and "no sweep block" in capsys.readouterr().err


@pytest.mark.slow  # ~20-55 s (subprocesses / full runs); `make test-slow`
def test_list_and_index_run_exactly_the_named_point(tmp_path, capsys):
    cfg = _config(tmp_path, "  model.body.num_steps: [1, 2, 3]\n")
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    rows = [line.split("\t") for line in lines]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert [r[1] for r in rows] == [f"model.body.num_steps={n}" for n in (1, 2, 3)]
    commands = [r[2] for r in rows]
    assert commands[1].endswith("--index 1")
    # Run the command printed for point 1, as a cluster's array job would.
    args = commands[1].split()[1:]
    proc = subprocess.run([sys.executable, "-m", "resode.cli", *args, "--quiet"], cwd=REPO)
    assert proc.returncode == 0
    done = sorted(p.name for p in out.iterdir() if (p / "summary.json").exists())
    assert done == ["num_steps=2"]
    assert load_config(out / "num_steps=2" / "config.yaml").model.body.num_steps == 2
    assert json.loads((out / "num_steps=2" / "point.json").read_text()) == {
        "model.body.num_steps": 2
    }


@pytest.mark.slow  # ~20-55 s (subprocesses / full runs); `make test-slow`
def test_interrupted_sweep_resumes_without_redoing_finished_points(tmp_path):
    cfg = _config(tmp_path, "  model.body.num_steps: [1, 2]\n  model.body.tied: [false, true]\n")
    out = tmp_path / "out"
    sweep = Sweep(cfg, [], out)
    sweep.write_manifest()
    sweep.run_point(0, quiet=True)  # an interrupted sweep: only point 0 finished
    stamp = (out / sweep.names[0] / "summary.json").stat().st_mtime_ns
    ran = Sweep(cfg, [], out).run(quiet=True)
    assert ran == [1, 2, 3]
    assert (out / sweep.names[0] / "summary.json").stat().st_mtime_ns == stamp
    assert Sweep(cfg, [], out).run(quiet=True) == []


@pytest.mark.slow  # ~20-55 s (subprocesses / full runs); `make test-slow`
def test_jobs_run_points_in_parallel_processes(tmp_path):
    cfg = _config(tmp_path, "  model.body.num_steps: [1, 2]\n")
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--jobs", "2", "--quiet"]) == 0
    for name in ("num_steps=1", "num_steps=2"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "finished"
    assert (out / "REPORT.md").exists()


@pytest.mark.slow  # ~16 s: two whole runs
def test_report_on_two_runs_has_table_csv_and_plots(tmp_path):
    for steps in (1, 3):
        code = main(
            [
                "run",
                str(_config(tmp_path, "  model.width: [8]\n")),
                f"model.body.num_steps={steps}",
                "--out",
                str(tmp_path / f"r{steps}"),
                "--quiet",
            ]
        )
        assert code == 0
    runs = collect_runs([tmp_path / "r1", tmp_path / "r3"])
    assert varying_keys(runs) == ["model.body.num_steps"]
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "r1"), str(tmp_path / "r3"), "--out", str(out)]) == 0
    text = (out / "REPORT.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | num_steps | status | test acc |")
    assert [line.split(" | ")[:2] for line in table[1:]] == [["| r1", "1"], ["| r3", "3"]]
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [r["model.body.num_steps"] for r in rows] == ["1", "3"]
    for r, run in zip(rows, runs, strict=False):
        assert float(r["test_accuracy"]) == pytest.approx(run.summary["test_accuracy"])
        assert int(r["num_params"]) == run.summary["num_params"]
    png = out / "plots" / "test_accuracy_vs_num_steps.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    # A directory that holds no runs is named.
    assert main(["report", str(tmp_path / "nothing")]) == 2


@pytest.mark.slow  # about 2 min on 2 cores: the ten points of the quick depth study
def test_quick_study_runs_end_to_end(tmp_path):
    out = tmp_path / "study"
    assert main(["sweep", "configs/depth_comparison_quick.yaml", "--out", str(out), "--quiet"]) == 0
    runs = collect_runs([out])
    assert len(runs) == 10 and all(r.summary["status"] == "finished" for r in runs)
    kinds = {r.config["model.body.kind"] for r in runs}
    assert kinds == {"plain", "residual", "implicit", "deq", "ode"}
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 10
    by_name = {r.path.name: r.summary for r in runs}
    # Explicit stacks: one VJP per forward evaluation; JFB: one; stacks have a gradient ratio.
    assert by_name["kind=residual,num_steps=2"]["backward_vjps"] == 2
    assert by_name["kind=deq,zero_init=true,adjoint=jfb"]["backward_vjps"] == 1
    assert by_name["kind=plain,num_steps=2"]["grad_flow"] > 0
    assert by_name["kind=ode,rtol=0.01"]["grad_flow"] is None
    assert (out / "plots" / "memory_bytes_vs_num_steps.png").exists()
