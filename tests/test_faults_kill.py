"""Fault injection, processes (issue 12): a tiny DPO experiment run as a user runs it
(`python experiments/dpo.py model=<tiny HF dir> ...`), SIGKILLed at three random points and
restarted each time, ends bit-identical to an uninterrupted run (exported weights, held-out
metrics, every logged loss); a second run on a directory in use stops at once with one line.

The kill points are random but reproducible: ALIGN_JAX_FAULT_SEED (default 12) seeds them; each
is "the restarted run has logged step p" plus a random delay, so a kill lands inside a step,
a checkpoint save or its asynchronous write, or the evaluation/export after training."""

import json
import os
import random
import signal
import time

import pytest

from fault_utils import (HANG, assert_one_line_error, dpo_args, metrics_rows, run,  # noqa: F401
                         start, tiny_policy)

STEPS = 12


def _args(policy, out, cache):
    return dpo_args(policy, out, cache, steps=STEPS, save_every=2, export="true")


def _wait(cond, proc, timeout=HANG, what=""):
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _lock_pid(out):
    try:
        return json.loads((out / "run.lock").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _rows_since(out, t0):
    """Steps the metrics log holds that were logged after t0 (by the current process)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    steps = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line being written
        if r["time"] >= t0:
            steps.append(r["step"])
    return steps


@pytest.fixture(scope="module")
def baseline(tiny_policy, tmp_path_factory):
    """The uninterrupted run. While it holds its directory (paused with SIGSTOP, so the check
    cannot race its end), a second run on the same out_dir is started."""
    d = tmp_path_factory.mktemp("kill")
    out, cache = d / "baseline", d / "cache"
    a = start("dpo.py", _args(tiny_policy, out, cache))
    _wait(lambda: _lock_pid(out) == a.pid, a, what="the first run to lock its directory")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        second = run("dpo.py", _args(tiny_policy, out, cache))
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=HANG)
    assert a.returncode == 0, a_err[-3000:]
    return dict(dir=d, out=out, cache=cache, pid=a.pid, second=second)


def test_second_run_on_a_busy_directory_stops_at_once(baseline):
    line = assert_one_line_error(baseline["second"], "error: run directory",
                                 f"is in use by another run: pid {baseline['pid']} on host")
    assert "dpo.py" in line  # names the holder's command
    # it stopped at the lock, before its first line of output (the run directory, printed
    # before the model is loaded): nothing was loaded, compiled or written
    assert baseline["second"].stdout == ""
    rows = metrics_rows(baseline["out"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step logged once
    assert not (baseline["out"] / "run.lock").exists()  # released on exit


def test_sigkill_at_three_random_points_resumes_bit_identical(baseline, tiny_policy):
    rng = random.Random(int(os.environ.get("ALIGN_JAX_FAULT_SEED", "12")))
    points = sorted(rng.sample(range(1, STEPS - 1), 3))
    delays = [rng.uniform(0.0, 0.4) for _ in points]
    out = baseline["dir"] / "killed"
    log = []
    for p, delay in zip(points, delays):
        t0 = time.time()
        proc = start("dpo.py", _args(tiny_policy, out, baseline["cache"]))
        _wait(lambda: any(s >= p for s in _rows_since(out, t0)), proc, what=f"step {p}")
        time.sleep(delay)
        assert proc.poll() is None, f"the run ended before the kill at step {p} + {delay:.2f}s"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        log.append((p, round(delay, 2), max(_rows_since(out, t0))))
    final = run("dpo.py", _args(tiny_policy, out, baseline["cache"]))
    assert final.returncode == 0, (log, final.stderr[-3000:])
    assert "taking over the stale lock" in final.stderr  # the SIGKILLed run's lock file
    assert "resumed from" in final.stdout, log

    ref, got = baseline["out"], out
    assert ((got / "export" / "model.safetensors").read_bytes()
            == (ref / "export" / "model.safetensors").read_bytes()), log
    assert (json.loads((got / "eval_after.json").read_text())
            == json.loads((ref / "eval_after.json").read_text())), log
    rows_ref, rows = metrics_rows(ref), metrics_rows(got)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), log  # every step once
    for a, b in zip(rows_ref, rows):
        for k in ("train/loss", "train/grad_norm", "train/rewards/margins", "train/lr"):
            assert a[k] == b[k], (k, a["step"], log)
