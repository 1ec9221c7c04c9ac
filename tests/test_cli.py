"""The experiment command line: --help lists every key with type, default and description; a typo
names the closest key; config=RUN_DIR/config.json loads a saved run's settings (hand-written
expectations; the experiment files' own Configs are checked for descriptions and round trips)."""
import dataclasses
import json

import pytest

from _experiment_files import EXPERIMENTS, load_module
from align_jax.cli import SHARED_HELP, config_dict, describe, help_text, parse_overrides
from align_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _Inner:
    top_p: float = 1.0  # nucleus threshold


@dataclasses.dataclass(frozen=True)
class _Cfg:
    steps: int = 3  # training steps
    # a learning rate,
    # described over two lines
    lr: float = 1e-5
    name: str | None = None
    tags: tuple[str, ...] = ("a", "b")
    seed: int = dataclasses.field(default=0, metadata={"help": "the seed"})
    mesh: str = "-1,1,1"
    out_dir: str | None = None
    sampling: _Inner = _Inner()


def test_describe_takes_comments_metadata_and_shared_help():
    assert list(describe(_Cfg())) == [
        ("steps", "int", "3", "training steps"),
        ("lr", "float", "1e-05", "a learning rate, described over two lines"),
        ("name", "str | None", "None", ""),
        ("tags", "tuple[str, ...]", "a,b", ""),
        ("seed", "int", "0", "the seed"),
        ("mesh", "str", "'-1,1,1'", SHARED_HELP["mesh"]),
        ("out_dir", "str | None", "None", SHARED_HELP["out_dir"]),
        ("sampling.top_p", "float", "1.0", "nucleus threshold"),
    ]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_every_key_and_exits_0(flag, capsys):
    with pytest.raises(SystemExit) as e:
        parse_overrides(_Cfg(), ["steps=5", flag])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(__doc__.strip().splitlines()[0])  # the module docstring comes first
    lines = out.splitlines()
    for want in ("steps: int = 3", "sampling.top_p: float = 1.0", "tags: tuple[str, ...] = a,b"):
        row = next(line for line in lines if line.strip().startswith(want))
        desc = dict((k, h) for k, _, _, h in describe(_Cfg()))[want.split(":")[0]]
        assert row.strip().endswith(desc)
    assert out == help_text(_Cfg()) + "\n"


@pytest.mark.parametrize("item,message", [
    ("stpes=3", "unknown key 'stpes' — did you mean 'steps'?"),
    ("sampling.top_pp=0.9", "unknown key 'sampling.top_pp' — did you mean 'sampling.top_p'?"),
    ("top_p=0.9", "unknown key 'top_p' — did you mean 'sampling.top_p'?"),
    ("zzz=1", "unknown key 'zzz' (--help lists every key)"),
    ("sampling=1", "config key 'sampling' is a group: set its keys (sampling.top_p)"),
    ("steps.x=1", "config key 'steps.x': 'steps' has no sub-keys"),
])
def test_unknown_keys_name_the_closest(item, message):
    with pytest.raises(ConfigError) as e:
        parse_overrides(_Cfg(), [item])
    assert str(e.value) == message


def test_config_file_then_overrides(tmp_path):
    saved = {"steps": 7, "lr": 3e-6, "name": None, "tags": ["x", "y"], "seed": 4,
             "mesh": "2,2,2", "out_dir": "/elsewhere/run", "sampling": {"top_p": 0.5}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    want = _Cfg(steps=9, lr=3e-6, name=None, tags=("x", "y"), seed=4, mesh="2,2,2",
                out_dir=None, sampling=_Inner(0.5))
    # config= applies first wherever it stands; out_dir is not taken from a saved run
    assert parse_overrides(_Cfg(name="n"), ["steps=9", f"config={tmp_path}/config.json"]) == want
    assert parse_overrides(_Cfg(), [f"config={tmp_path}", "steps=9"]) == want  # the run dir
    assert parse_overrides(_Cfg(), [f"config={tmp_path}", "out_dir=o"]).out_dir == "o"


@pytest.mark.parametrize("saved,message", [
    ({"stpes": 1}, "unknown key 'stpes' — did you mean 'steps'?"),
    ({"sampling": {"top": 1.0}}, "unknown key 'sampling.top' — did you mean 'sampling.top_p'?"),
    ({"steps": "7"}, 'steps="7": expected int'),
    ({"steps": True}, "steps=true: expected int"),
    ({"tags": "x"}, 'tags="x": expected tuple[str, ...]'),
    ({"sampling": 3}, "'sampling' must be an object of its keys"),
])
def test_config_file_errors_name_the_key(tmp_path, saved, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    with pytest.raises(ConfigError) as e:
        parse_overrides(_Cfg(), [f"config={path}"])
    assert str(e.value) == f"config={path}: {message}"


def test_config_file_missing_or_repeated(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        parse_overrides(_Cfg(), [f"config={tmp_path}/nope.json"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="config= given more than once"):
        parse_overrides(_Cfg(), [f"config={tmp_path}", f"config={tmp_path}"])


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_configs_describe_every_key_and_round_trip(path, tmp_path):
    Config = load_module(path).Config
    missing = [k for k, _, _, h in describe(Config()) if not h]
    assert not missing, f"{path.name}: add a `# comment` to the fields {missing}"
    cfg = parse_overrides(Config(), ["steps=3", "seed=5", "out_dir=somewhere"])
    (tmp_path / "config.json").write_text(json.dumps(config_dict(cfg)))  # as the runs write it
    loaded = parse_overrides(Config(), [f"config={tmp_path}"])
    assert loaded == dataclasses.replace(cfg, out_dir=None)
