"""Every experiment file (`experiments/*.py`, by glob) started as a user starts it: a subprocess
from the repo root, the default run directory (no out_dir=), tiny size settings. It must exit 0
and leave its artefacts; started again on that run directory with one more step it must resume
from the checkpoint (the logged step 1 kept as it was, step 2 appended) instead of starting over.
Also: --help, a mistyped key, and a run from another working directory with a relative out_dir=
(orbax refuses relative checkpoint paths: README command 1 once died at its first checkpoint)."""
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _experiment_files import EXPERIMENTS, REPO, load_module, tiny_args
from align_jax import report as run_report
from align_jax.cli import describe, parse_overrides

RUN_DIR_LINE = re.compile(r"^\[align_jax\] run directory: (.+)$", re.M)
PNG = b"\x89PNG\r\n\x1a\n"


def start(args, env, cwd=REPO, expect=0) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert expect is None or res.returncode == expect, (f"{args} exited {res.returncode}\n--- stdout\n"
                                      f"{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-6000:]}")
    return res


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_run(run: Path, Config, args: list[str], steps: int) -> None:
    """The artefacts of a run that has done `steps` steps with the overrides `args`."""
    # config.json is the resolved config, and config=RUN_DIR starts a run from it
    assert parse_overrides(Config(), [f"config={run}"]) == dataclasses.replace(
        parse_overrides(Config(), args), out_dir=None)
    assert logged_steps(run) == list(range(1, steps + 1))
    ckpts = {p.name for p in (run / "checkpoints").iterdir()}
    assert str(steps) in ckpts and not any("tmp" in n or "incomplete" in n for n in ckpts), ckpts
    assert all((run / "checkpoints" / n / "commit_success.txt").is_file() for n in ckpts)
    assert (run / "curves.png").read_bytes()[:8] == PNG
    tables = [(run / f).read_text() for f in ("samples.md", "summary.md") if (run / f).exists()]
    assert tables and all("| before | after |" in t for t in tables)
    before, after = run_report.load_evals(run)
    # after may add comparisons with before (the confidence run's *_both metrics)
    assert before and after and set(before) <= set(after)
    if Config().export:
        assert (run / "export/config.json").is_file() and any((run / "export").glob("*.safetensors"))
    else:
        assert not (run / "export").exists()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_runs_and_resumes_as_a_user_runs_it(path, run_env):
    Config = load_module(path).Config
    rel = path.relative_to(REPO)
    out = start([rel, "--help"], run_env).stdout
    for key, typ, default, _ in describe(Config()):
        assert f"  {key}: {typ} = {default}" in out

    args1 = tiny_args(path, 1)
    first = start([rel, *args1], run_env, expect=None)
    found = RUN_DIR_LINE.findall(first.stdout)
    # the experiment's own run dir comes first; sub-runs (ALaRM's reward model) live inside it
    assert found and all(f.startswith(found[0]) for f in found), (first.stdout[-3000:]
                                                                   + first.stderr[-3000:])
    run = Path(found[0])
    try:
        assert first.returncode == 0, first.stderr[-6000:]
        assert run.parent == REPO / "runs" and run.name.startswith(path.stem)  # the default
        check_run(run, Config, args1, steps=1)
        step1 = (run / "metrics.jsonl").read_text().splitlines()[0]

        args2 = [*tiny_args(path, 2), f"out_dir={run}"]
        second = start([rel, *args2], run_env)
        assert f"[align_jax] resumed from {run / 'checkpoints'} at step 1\n" in second.stdout
        check_run(run, Config, args2, steps=2)
        assert (run / "metrics.jsonl").read_text().splitlines()[0] == step1  # not redone

        assert run_report.main([str(run)])["md"].read_text().startswith(f"# {run.name}\n")
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_mistyped_key_is_one_line_naming_the_closest(run_env):
    res = start(["experiments/dpo.py", "stpes=3"], run_env, expect=2)
    assert res.stderr == "error: unknown key 'stpes' — did you mean 'steps'?\n"


def test_run_from_another_directory_with_a_relative_out_dir(run_env, tmp_path):
    exp = REPO / "experiments/dpo.py"
    res = start([exp, *tiny_args(exp, 1), "out_dir=relative/dir"], run_env, cwd=tmp_path)
    run = tmp_path / "relative/dir"
    assert f"[align_jax] run directory: {run}\n" in res.stdout
    assert logged_steps(run) == [1]
    assert (run / "checkpoints/1/commit_success.txt").is_file()
    assert (run / "curves.png").is_file() and (run / "summary.md").is_file()
