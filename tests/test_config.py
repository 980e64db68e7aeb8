"""resode.config: schema, YAML + overrides, and one-line errors that name the key."""

import dataclasses

import pytest

from resode.config import Config, ConfigError, load_config, save_config, to_yaml

REQUIRED = [
    "seed",
    "data.name",
    "data.batch_size",
    "model.stem",
    "model.width",
    "model.body.kind",
    "model.body.scheme",
    "model.body.num_steps",
    "model.body.tied",
    "model.body.solver",
    "model.body.adjoint",
    "train.steps",
    "train.lr",
    "train.optimizer",
    "eval.every",
]


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_defaults_are_valid_and_have_every_required_key():
    cfg = load_config()
    assert isinstance(cfg, Config)
    for key in REQUIRED:
        _get(cfg, key)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "seed: 3\n"
        "model:\n  width: 32\n  body:\n    kind: implicit\n    scheme: trapezoid\n"
        "train:\n  steps: 50\n"
    )
    cfg = load_config(path, ["train.steps=7", "model.body.tied=true", "train.lr=0.01"])
    assert (cfg.seed, cfg.model.width, cfg.model.body.scheme) == (3, 32, "trapezoid")
    assert (cfg.train.steps, cfg.model.body.tied, cfg.train.lr) == (7, True, 0.01)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["train.stepz=5"], r"^train\.stepz: .*'stepz'"),
        (["train.steps=abc"], r"^train\.steps: .*'abc'"),
        (
            ["model.body.scheme=rk5"],
            r"^model\.body\.scheme: 'rk5' is not allowed; choose one of: euler, .*radau_iia3",
        ),
        (["model.body.num_steps=-1"], r"^model\.body\.num_steps: must be > 0"),
        (["data.name=cifar"], r"^data\.name: 'cifar' is not allowed"),
        (
            ["model.body.kind=implicit"],
            r"^model\.body\.scheme: kind 'implicit' needs an implicit scheme",
        ),
        (
            ["model.body.kind=residual", "model.body.scheme=backward_euler"],
            r"needs an explicit scheme",
        ),
        (["model.body.solver=gmres"], r"^model\.body\.solver: .*picard, anderson, broyden, newton"),
        (["train.optimizer=lion"], r"^train\.optimizer: .*adam, adamw, sgd"),
        (["train.precision=float16"], r"^train\.precision: 'float16' is not allowed.*bfloat16"),
        (["model.body.drop_rate=1.0"], r"^model\.body\.drop_rate"),
        (["train.steps"], r"must look like key=value"),
        (["train.lr=[1,2"], r"^override 'train\.lr=\[1,2'"),
        (["sweep.model.width=3"], r"^sweep\.model: must be a non-empty list"),
        (["model.body.reversible=revnet"], r"^model\.body\.reversible: 'revnet' is not allowed"),
        (
            ["model.body.kind=deq", "model.body.reversible=momentum"],
            r"^model\.body\.reversible: only kind 'residual'",
        ),
        (
            ["model.body.reversible=leapfrog", "model.body.scheme=rk4"],
            r"^model\.body\.scheme: reversible 'leapfrog' replaces the scheme",
        ),
        (
            ["model.body.reversible=momentum", "model.body.gamma=1.0"],
            r"^model\.body\.gamma: must be in \(0, 1\)",
        ),
        (["model.body.learn_gamma=true"], r"^model\.body\.learn_gamma: needs"),
        (
            ["model.body.kind=none", "model.body.spectral_bound=1"],
            r"^model\.body\.spectral_bound: kind 'none' has no field",
        ),
        (["model.body.spectral_bound=-2"], r"^model\.body\.spectral_bound: must be > 0"),
    ],
)
def test_errors_are_one_line_and_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_unknown_key_in_a_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"^model\.depth: "):
        load_config(path)


def test_yaml_is_data_only(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.body.kind=deq", "model.body.solver=broyden", "sweep={}"][:2])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    assert "broyden" in to_yaml(cfg)
    assert not (tmp_path / "config.yaml.tmp").exists()


def test_sweep_block(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("sweep:\n  model.body.num_steps: [1, 2, 4]\n  model.body.tied: [true, false]\n")
    cfg = load_config(path)
    assert cfg.sweep == {"model.body.num_steps": [1, 2, 4], "model.body.tied": [True, False]}


def test_every_committed_config_loads_and_validates():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        cfg = load_config(path, [])
        assert cfg.model.body.kind, path
