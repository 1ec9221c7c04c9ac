"""Several hosts, proven on one machine: two processes joined by `jax.distributed.initialize`
(4 CPU devices each, gloo collectives), each feeding its own share of every global batch, give
what one process holding all 8 devices gives — the train step, the sampler, BERTScore and
reward-model scoring (each host gets back the results of its own inputs), and an orbax
checkpoint written by both, both killed, both restarted (tests/_multiprocess_worker.py)."""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _experiment_files import REPO, user_env

WORKER = Path(__file__).with_name("_multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(tmp_path, mode: str, nproc: int, *extra) -> tuple[list, Path]:
    out = tmp_path / f"{mode}{nproc}"
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), mode, str(out), str(i), str(nproc),
                               port, *map(str, extra)],
                              cwd=REPO, env=user_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
    return procs, out


def _run(tmp_path, mode: str, nproc: int, *extra) -> list[dict]:
    """Every process's result, in process order."""
    procs, out = _start(tmp_path, mode, nproc, *extra)
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [json.loads(Path(f"{out}.{i}.json").read_text()) for i in range(nproc)]


@pytest.fixture(scope="module")
def one_train(tmp_path_factory):
    """The uninterrupted single-process run (both train tests compare against it)."""
    return _run(tmp_path_factory.mktemp("one"), "train", 1)[0]


def test_two_processes_train_like_one(tmp_path, one_train):
    one, two = one_train, _run(tmp_path, "train", 2)
    assert [t["local_rows"] for t in two] == [4, 4] and one["local_rows"] == 8  # its half
    for t in two:
        assert t["losses"] == pytest.approx(one["losses"], abs=1e-5)
        assert t["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
    assert one["losses"]["3"] < one["losses"]["1"]  # it trained


def test_two_processes_sample_their_own_prompts(tmp_path):
    """Process 1's prompts are longer than process 0's (another padding bucket): the hosts
    agree on one width, and each gets the texts of ITS prompts — the same tokens that one
    process sampling all 8 prompts gives those rows."""
    (one,), two = _run(tmp_path, "sample", 1), _run(tmp_path, "sample", 2)
    assert two[0]["prompts"] + two[1]["prompts"] == one["prompts"]
    assert two[0]["tokens"] + two[1]["tokens"] == one["tokens"]
    assert two[0]["texts"] + two[1]["texts"] == one["texts"]
    assert two[0]["width"] == two[1]["width"] == one["width"]
    assert len(set(map(tuple, one["tokens"]))) > 1  # sampled, not a constant


def test_two_processes_score_their_own_pairs(tmp_path):
    """5 + 2 BERTScore pairs and 5 + 3 reward-model sequences: the hosts agree on batch
    counts and lengths; each gets the scores of its own pairs, equal to one process's."""
    (one,), two = _run(tmp_path, "score", 1), _run(tmp_path, "score", 2)
    for key in ("f1", "f1_again", "rm"):
        got = two[0][key] + two[1][key]
        np.testing.assert_allclose(got, one[key], atol=1e-5, err_msg=key)
    assert [len(t["f1"]) for t in two] == [5, 2] and [len(t["rm"]) for t in two] == [5, 3]
    assert np.ptp(one["f1"]) > 0.05 and np.ptp(one["rm"]) > 0  # distinct pairs, real scores


def test_two_processes_checkpoint_kill_resume(tmp_path, one_train):
    """Both processes checkpoint steps 1-2 into one run directory, are SIGKILLed, restart,
    restore step 2 (weights, optimizer and data-loader position) and train step 3: the result
    equals an uninterrupted single-process run."""
    one = one_train
    run_dir = tmp_path / "run"
    procs, _ = _start(tmp_path, "save", 2, run_dir)
    deadline = time.time() + 600
    for p in procs:  # wait until each has written step 2
        for line in p.stdout:
            if line.startswith("SAVED"):
                break
        assert time.time() < deadline and p.poll() is None, "worker ended before SAVED"
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert sorted(x.name for x in (run_dir / "checkpoints").iterdir()
                  if x.name.isdigit()) == ["1", "2"]
    two = _run(tmp_path, "resume", 2, run_dir)
    for t in two:
        assert t["start"] == 2
        assert t["losses"] == {"3": pytest.approx(one["losses"]["3"], abs=1e-5)}
        assert t["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
