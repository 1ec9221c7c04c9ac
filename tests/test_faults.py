"""Fault injection, training side (issue 12): non-finite steps, divergence, export of a diverged
policy, an all-zero gradient, run-directory locks, corrupt checkpoints.

Oracles: the state before a skipped step (bit-equal afterwards), the last good checkpoint (bit-
equal to the one before the skipped steps), exit codes and the one `error:` line of a real
experiment process, the files left in its run directory. Data and config faults are in
test_faults_data.py / test_faults_config.py, SIGKILL/resume and two concurrent runs in
test_faults_kill.py."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align_jax.algorithms.preference import TrainConfig, attach_reference, train_preference
from align_jax.train.optim import OptimConfig
from align_jax.algorithms.preference_step import make_loss_fn
from align_jax.algorithms.reference_cache import PrefData
from align_jax.data import PreferencePair, TokenizeConfig
from align_jax.errors import CheckpointError, ConfigError, DivergenceError, RunDirBusy
from align_jax.losses import PrefConfig
from align_jax.models import export_hf, hf_io
from align_jax.models.config import DecoderConfig
from align_jax.models.llama import Decoder
from align_jax.train import runlock
from align_jax.train.checkpoint import Checkpointer
from align_jax.train.guard import NonFiniteGuard
from align_jax.train.optim import make_optimizer
from align_jax.train.state import create_train_state
from align_jax.train.step import FAST_COMPILE, lm_loss_fn, make_train_step
from fault_utils import (assert_one_line_error, dpo_args, metrics_rows, pair_rows,  # noqa: F401
                         restore_flat, run, tiny_policy, word_tokenizer, write_jsonl)

CFG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8)


def _lm_batch(i, poison=0.0):
    rng = np.random.default_rng(100 + i)
    ids = rng.integers(0, CFG.vocab_size, (4, 12)).astype(np.int32)
    am = np.ones((4, 12), np.int32)
    return dict(input_ids=ids, attention_mask=am, loss_mask=am,
                poison=np.full((4,), poison, np.float32))


def _poisonable(loss_fn):
    """NaN loss for batches whose `poison` flag is set: a fault injected INSIDE the step."""

    def f(model, batch, rng):
        loss, m = loss_fn(model, batch, rng)
        return loss * jnp.where(batch["poison"][0] > 0, jnp.nan, 1.0), m

    return f


def _host(tree):
    # copies: a zero-copy numpy view of a CPU buffer would keep the step from donating it
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_nonfinite_step_is_not_applied_counted_and_donation_kept():
    opt = make_optimizer("adamw", lr=1e-2, schedule="constant")
    state, bundle = create_train_state(Decoder(CFG, rngs=nnx.Rngs(0)), opt, 0)
    step = make_train_step(_poisonable(lm_loss_fn()), opt, bundle, compiler_options=FAST_COMPILE)
    state, m = step(state, _lm_batch(0))
    assert float(m["skipped_nonfinite"][0]) == 0.0
    before = _host(state)
    donated = jax.tree.leaves(state.params)
    state, m = step(state, _lm_batch(1, poison=1.0))
    assert all(x.is_deleted() for x in donated)  # the select kept the step donating its state
    assert float(m["skipped_nonfinite"][0]) == 1.0 and np.isnan(float(m["loss"][0]))
    after = _host(state)
    _assert_equal(after.params, before.params)
    _assert_equal(after.opt_state, before.opt_state)
    assert int(after.step) == int(before.step) == 1  # the lr metric follows the optimizer
    assert not np.array_equal(after.rng, before.rng)  # the next batch gets fresh randomness
    state, m = step(state, _lm_batch(1))
    assert float(m["skipped_nonfinite"][0]) == 0.0 and int(state.step) == 2
    assert not np.array_equal(jax.tree.leaves(_host(state.params))[0],
                              jax.tree.leaves(before.params)[0])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # lr=1e39
def test_step_with_finite_loss_but_overflowing_weights_is_skipped():
    # lr=1e39 is inf in float32: loss and gradient are finite, the new weights are not
    opt = make_optimizer("sgd", lr=1e39, schedule="constant", grad_clip=None)
    state, bundle = create_train_state(Decoder(CFG, rngs=nnx.Rngs(0)), opt, 0)
    step = make_train_step(lm_loss_fn(), opt, bundle, compiler_options=FAST_COMPILE)
    before = _host(state.params)
    state, m = step(state, _lm_batch(0))
    assert np.isfinite(float(m["loss"][0])) and np.isfinite(float(m["grad_norm"][0]))
    assert float(m["skipped_nonfinite"][0]) == 1.0
    _assert_equal(_host(state.params), before)


@dataclasses.dataclass
class _PoisonFrom(PrefData):
    """Training batches from the `poison_from`-th call on carry poison=1 (the reference pass,
    which asks for extras=False, is never poisoned)."""

    poison_from: int = 10**9
    calls: list = dataclasses.field(default_factory=lambda: [0])

    def batch(self, indices, extras: bool = True):
        out = super().batch(indices, extras)
        if extras:
            self.calls[0] += 1
            out["poison"] = np.full((len(indices),), float(self.calls[0] >= self.poison_from),
                                    np.float32)
        return out


def test_guard_stops_after_n_in_a_row_keeping_the_last_good_checkpoint(tiny_policy, tmp_path):
    model, tok = hf_io.load_hf_dir(tiny_policy), word_tokenizer()
    pairs = [PreferencePair(**r) for r in pair_rows(16)]
    tcfg = TokenizeConfig(max_prompt_len=4, max_completion_len=8, pad_multiple=16,
                          pad_to_max=True)
    data = attach_reference(model, PrefData("pair", pairs, tok, tcfg), PrefConfig(), "cache",
                            cache_dir=tmp_path / "cache", compiler_options=FAST_COMPILE)
    data = _PoisonFrom(**{f.name: getattr(data, f.name) for f in dataclasses.fields(PrefData)},
                       poison_from=3)
    loss_fn = _poisonable(make_loss_fn(PrefConfig(), completion_len=8))
    cfg = TrainConfig(steps=8, optim=OptimConfig(lr=1e-3), save_every=1, keep_checkpoints=10,
                      progress=False, max_nonfinite_steps=3)
    run_dir = tmp_path / "run"
    with pytest.raises(DivergenceError) as e:
        train_preference(model, data, loss_fn, cfg, run_dir, compiler_options=FAST_COMPILE)
    msg = str(e.value)
    assert "3 consecutive steps (3-5)" in msg and "last finite step 2: loss=" in msg, msg
    assert "last good checkpoint: step 4" in msg and "nothing exported" in msg, msg
    rows = metrics_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # the diverging steps are logged once
    assert [r["train/skipped_nonfinite"] for r in rows] == [0, 0, 1, 1, 1]
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2, 3, 4]  # the stopping step is not checkpointed
    good, last = (restore_flat(run_dir / "checkpoints", s) for s in (2, 4))
    for k in good:  # skipped steps changed nothing but the rng
        if not k.endswith("_rng"):
            np.testing.assert_array_equal(last[k], good[k], err_msg=k)
    assert all(np.isfinite(v).all() for v in last.values() if v.dtype.kind == "f")
    assert not (run_dir / runlock.LOCK_NAME).exists()  # the loop released its lock


def test_diverging_experiment_stops_with_one_line_and_exports_nothing(tiny_policy, tmp_path):
    """`dpo.py lr=1e30 export=true` (the issue's probe): step 1 is finite, the weights it makes
    give NaN from step 2, the run stops after 3 such steps with one line and exit 2, leaves no
    export. The same run reads a data file with two bad records (skipped and counted) and one
    over-long prompt (truncated and counted)."""
    rows = [json.dumps(r) for r in pair_rows(24)]
    rows.insert(5, json.dumps({"prompt": "q1", "chosen": " ", "rejected": "b1"}))
    long = {"prompt": " ".join(["q3"] * 40), "chosen": "g1", "rejected": "b2"}
    data = tmp_path / "pairs.jsonl"
    with open(data, "wb") as f:
        f.write(("\n".join(rows) + "\n").encode())
        f.write(b'{"prompt": "q1 \xff", "chosen": "g1", "rejected": "b1"}\n')
        f.write((json.dumps(long) + "\n").encode())
    out = tmp_path / "run"
    res = run("dpo.py", dpo_args(tiny_policy, out, tmp_path / "cache", data=data, lr=1e30,
                                 steps=8, save_every=1, export="true", skip_bad_records="true"))
    line = assert_one_line_error(res, "training diverged", "3 consecutive steps (2-4)",
                                 "last finite step 1: loss=0.69")
    assert "last good checkpoint: step" in line
    assert not (out / "export").exists()
    m = metrics_rows(out)
    assert [r["step"] for r in m] == [1, 2, 3, 4]
    assert [r["train/skipped_nonfinite"] for r in m] == [0, 1, 1, 1]
    latest = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert latest == 3
    assert all(np.isfinite(v).all() for v in restore_flat(out / "checkpoints", latest).values()
               if v.dtype.kind == "f")
    rep = json.loads((out / "data_report.json").read_text())
    (load,) = rep["loads"]
    assert (load["examples"], load["skipped"], load["filtered"]) == (25, 2, 0)
    assert "line 6" in load["skipped_records"][0] and "field 'chosen'" in load["skipped_records"][0]
    assert "line 26" in load["skipped_records"][1] and "invalid UTF-8" in load["skipped_records"][1]
    assert rep["truncation"]["train"]["prompts_truncated"] == 1
    assert "[align_jax] data: pairs.jsonl: 25 examples, 2 skipped" in res.stdout


def test_export_refuses_nonfinite_weights(tmp_path):
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    model.layers.wq.set_value(model.layers.wq.get_value().at[0, 3, 5].set(jnp.nan))
    with pytest.raises(DivergenceError, match=r"refusing to export non-finite weights: 1 of \d+ "
                                              r"tensors .*layers\.0\.self_attn\.q_proj"):
        export_hf(model, None, tmp_path / "export")
    assert not (tmp_path / "export").exists()  # refused before writing anything


def test_saturated_model_has_exactly_zero_gradient_and_the_guard_warns(capsys):
    """The lr=1000 finding: after huge updates (Adam moves every weight by ~lr per step, sign-
    like) the residual stream passes ~1.8e19, mean(x²) in RMSNorm overflows to inf, rsqrt(inf)
    = 0 zeroes the hidden state: logits exactly 0, loss finite (uniform), gradient exactly 0."""
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    signs = jax.tree.map(lambda x: jnp.where(x >= 0, 2600.0, -2600.0), params)
    batch = {k: jnp.asarray(v) for k, v in _lm_batch(0).items()}

    def loss(p):
        return lm_loss_fn()(nnx.merge(graphdef, p), batch, None)[0]

    def logits(p):
        return nnx.merge(graphdef, p)(batch["input_ids"], attention_mask=batch["attention_mask"])

    assert float(jnp.abs(jax.jit(logits, compiler_options=FAST_COMPILE)(signs)).max()) == 0.0
    value, grads = jax.jit(jax.value_and_grad(loss), compiler_options=FAST_COMPILE)(signs)
    np.testing.assert_allclose(float(value), np.log(CFG.vocab_size), rtol=1e-6)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))

    guard = NonFiniteGuard(max_consecutive=3, zero_grad_steps=3)
    for s in range(1, 6):
        guard.observe(s, {"train/loss": float(value), "train/grad_norm": 0.0,
                          "train/skipped_nonfinite": 0.0})
    out = capsys.readouterr().out
    assert out.count("grad_norm has been exactly 0.0 for 3 steps (up to step 3)") == 1
    assert "RMSNorm" in out


# ----------------------------------------------------------------------------- run lock
def test_default_run_dirs_started_in_one_second_are_distinct(tmp_path, monkeypatch):
    """A sweep starting runs at once: the default name of the same second gets -2, -3 (it used to
    be the first run's directory: the later run resumed it, or stopped at its lock)."""
    from align_jax.train import report

    monkeypatch.setattr(report.time, "strftime", lambda fmt: "20261204-120000")
    dirs = [report.make_run_dir("dpo", root=str(tmp_path / "runs")) for _ in range(3)]
    assert [d.name for d in dirs] == ["dpo-20261204-120000", "dpo-20261204-120000-2",
                                      "dpo-20261204-120000-3"]
    assert report.make_run_dir("dpo", out_dir=str(dirs[0])) == dirs[0]  # out_dir= resumes


def test_run_lock_stale_takeover_other_host_and_release(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs, as a SIGKILLed run leaves it
    (d / runlock.LOCK_NAME).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "start": "2020-01-01T00:00:00"}))
    lock = runlock.acquire(d)
    assert f"taking over the stale lock of {d} (pid {dead.pid}" in capsys.readouterr().err
    assert json.loads((d / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert runlock.acquire(d) is lock  # re-entrant inside one process
    # a live holder in another process: that process cannot take it and is told who holds it
    probe = ("import sys; sys.path.insert(0, %r)\n"
             "from align_jax.train import runlock\n"
             "try:\n    runlock.acquire(%r)\nexcept Exception as e:\n    print(type(e).__name__, e)"
             % (str(runlock.Path(runlock.__file__).parents[2]), str(d)))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}).stdout
    assert out.startswith("RunDirBusy run directory") and f"pid {os.getpid()} on host" in out, out
    lock.release()
    assert not (d / runlock.LOCK_NAME).exists()
    # a lock written on another host is never taken over (its flock may be invisible here)
    (d / runlock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "start": "x"}))
    with pytest.raises(RunDirBusy, match=r"lock from another host: pid 1 on host elsewhere"):
        runlock.acquire(d)


# ----------------------------------------------------------------------------- checkpoints
def _saved_run(d, steps=(2, 4), async_save=False):
    opt = make_optimizer("adamw", lr=1e-2, schedule="constant")
    state, bundle = create_train_state(Decoder(CFG, rngs=nnx.Rngs(0)), opt, 0)
    step = make_train_step(lm_loss_fn(), opt, bundle, compiler_options=FAST_COMPILE)
    ck = Checkpointer(d, save_every=2, keep=5, async_save=async_save)
    snaps = {}
    for i in range(max(steps)):
        state, _ = step(state, {k: v for k, v in _lm_batch(i).items() if k != "poison"})
        if i + 1 in steps:
            ck.save(i + 1, state, extra={"pos": i + 1}, force=True)
            snaps[i + 1] = _host(state)
    return ck, state, snaps


def _truncate_biggest(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(b"")
    return victim


# orbax leaves the reads of a failed restore as never-awaited coroutines: not ours to fix
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    ck, state, snaps = _saved_run(tmp_path / "ck")
    ck.close()
    _truncate_biggest(tmp_path / "ck" / "4")  # the probe: one state file emptied
    ck = Checkpointer(tmp_path / "ck", save_every=2)
    got, extra, at = ck.restore_latest(state)
    assert at == 2 and extra == {"pos": 2}
    _assert_equal(_host(got), snaps[2])
    assert "checkpoint(s) 4 (ValueError: OUT_OF_RANGE" in capsys.readouterr().out
    assert (tmp_path / "ck" / "4.corrupt-0").is_dir() and ck.all_steps() == [2]
    _truncate_biggest(tmp_path / "ck" / "2")  # none left that restores: one line says so
    with pytest.raises(CheckpointError, match=r"^no checkpoint in .* restores: step 2 \("):
        ck.restore_latest(state)
    ck.close()


def test_checkpoint_from_another_config_is_a_config_error_not_corruption(tmp_path):
    ck, _, _ = _saved_run(tmp_path / "ck", steps=(2,))
    ck.close()
    other = dataclasses.replace(CFG, intermediate_size=48)
    opt = make_optimizer("adamw", lr=1e-2, schedule="constant")
    state, _ = create_train_state(Decoder(other, rngs=nnx.Rngs(0)), opt, 0)
    ck = Checkpointer(tmp_path / "ck")
    with pytest.raises(ConfigError, match="the config changed since it was written"):
        ck.restore_latest(state)
    assert ck.all_steps() == [2]  # left where it is
    ck.close()


def test_torn_write_is_caught_at_save_time(tmp_path):
    ck, state, _ = _saved_run(tmp_path / "ck", steps=(2,), async_save=True)
    ck.mngr.wait_until_finished()  # the write finished; the disk then lost part of it
    _truncate_biggest(tmp_path / "ck" / "2")
    with pytest.raises(CheckpointError, match=r"checkpoint .*/2 failed verification right after "
                                              r"it was written \(empty file"):
        ck.save(4, state, force=True)
    assert (tmp_path / "ck" / "2.corrupt-0").is_dir()
    ck.close()
