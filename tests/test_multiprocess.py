"""Several hosts, proven on one machine: two processes joined by `jax.distributed.initialize`
(CPU devices, gloo collectives), each feeding its own half of every global batch, train the same
tiny model to the same losses and weights as one process holding all 4 devices."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _experiment_files import REPO, user_env

WORKER = Path(__file__).with_name("_multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(tmp_path, nproc: int) -> dict:
    out = tmp_path / f"out{nproc}.json"
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out), str(i), str(nproc), port],
                              cwd=REPO, env=user_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return json.loads(out.read_text())


def test_two_processes_train_like_one(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert two["local_rows"] == 4 and one["local_rows"] == 8  # each host collates its half
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["losses"][-1] < two["losses"][0]  # it trained
    assert two["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
