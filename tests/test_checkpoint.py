"""Checkpoint/resume: bit-identical restore, bit-identical continuation, torn checkpoints ignored,
keep-last-K, sharded restore onto a different mesh."""

import jax
import numpy as np
import pytest
from flax import nnx

from align_jax.models.config import DecoderConfig
from align_jax.models.llama import Decoder
from align_jax.sharding import make_mesh
from align_jax.train.checkpoint import Checkpointer
from align_jax.train.optim import make_optimizer
from align_jax.train.state import abstract_train_state, create_train_state
from align_jax.train.step import FAST_COMPILE, lm_loss_fn, make_train_step

CFG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8)


def _batch(i):
    rng = np.random.default_rng(100 + i)
    ids = rng.integers(0, CFG.vocab_size, (4, 12)).astype(np.int32)
    am = np.ones((4, 12), np.int32)
    return dict(input_ids=ids, attention_mask=am, loss_mask=am)


def _fresh(seed):
    """A brand-new process's view: model, optimizer, state, step function."""
    opt = make_optimizer("adamw", lr=1e-2, schedule="cosine", warmup_steps=1, total_steps=10,
                         weight_decay=0.1)
    state, bundle = create_train_state(Decoder(CFG, rngs=nnx.Rngs(seed)), opt, seed)
    step = make_train_step(lm_loss_fn(), opt, bundle, compiler_options=FAST_COMPILE)
    return state, step


def _host(state):
    return jax.tree.map(np.asarray, jax.device_get(state))


def _assert_bit_equal(a, b):
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    assert len(la) == len(lb) and jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Uninterrupted run of 4 steps, checkpointing every 2 (async), plus snapshots."""
    d = tmp_path_factory.mktemp("ckpt")
    state, step = _fresh(0)
    ck = Checkpointer(d, save_every=2, keep=3)
    snaps = {}
    for i in range(4):
        state, _ = step(state, _batch(i))  # donates: the old state is gone after this call
        n = int(state.step)
        if ck.save(n, state, extra={"data_pos": n, "config": {"lr": 1e-2}}):
            snaps[n] = _host(state)
    ck.close()
    return dict(dir=d, snaps=snaps, final=_host(state))


def test_resume_bit_identical_and_continuation(run):
    assert sorted(run["snaps"]) == [2, 4]
    # "Kill": nothing survives but the directory. Delete the newest step to resume from step 2.
    import shutil

    shutil.rmtree(run["dir"] / "4")
    state, step = _fresh(seed=7)  # different init: restore must overwrite everything
    ck = Checkpointer(run["dir"], save_every=2, keep=3)
    restored, extra, at = ck.restore_latest(abstract_train_state(state))
    assert at == 2 and extra == {"data_pos": 2, "config": {"lr": 1e-2}}
    _assert_bit_equal(run["snaps"][2], _host(restored))
    for i in range(extra["data_pos"], 4):
        restored, _ = step(restored, _batch(i))
    _assert_bit_equal(run["final"], _host(restored))
    ck.close()


def test_half_written_checkpoint_ignored(run, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(run["dir"], d)
    good = max(int(p.name) for p in d.iterdir() if p.name.isdigit())
    # A crash mid-write: a step dir with some files but no commit marker, and an orbax tmp dir.
    torn = d / "9"
    shutil.copytree(d / str(good), torn)
    (torn / "commit_success.txt").unlink()
    (d / "11.orbax-checkpoint-tmp-123").mkdir()
    ck = Checkpointer(d, save_every=2)
    assert ck.skipped == ["9"] and (d / "9.incomplete-0").is_dir()
    assert ck.all_steps()[-1] == good
    state, _ = _fresh(seed=3)
    _, extra, at = ck.restore_latest(abstract_train_state(state))
    assert at == good and extra["data_pos"] == good
    ck.close()


def test_keep_last_k_and_empty_dir(tmp_path):
    state, _ = _fresh(seed=1)
    ck = Checkpointer(tmp_path / "k", save_every=1, keep=2, async_save=False)
    assert ck.restore_latest(abstract_train_state(state)) is None
    for s in (1, 2, 3):
        assert ck.save(s, state)
    assert ck.all_steps() == [2, 3]
    ck.close()


def test_sharded_restore_onto_other_mesh(tmp_path):
    opt = make_optimizer("adamw", lr=1e-3, schedule="constant")
    mesh_a, mesh_b = make_mesh("2,2,2"), make_mesh("1,4,2")
    state, _ = create_train_state(Decoder(CFG, rngs=nnx.Rngs(5)), opt, 5, mesh_a)
    before = _host(state)
    with Checkpointer(tmp_path / "s", save_every=1) as ck:
        ck.save(1, state)
    target, _ = create_train_state(Decoder(CFG, rngs=nnx.Rngs(6)), opt, 6, mesh_b)
    with Checkpointer(tmp_path / "s") as ck:
        restored, _, at = ck.restore_latest(abstract_train_state(target, mesh_b))
    assert at == 1
    _assert_bit_equal(before, _host(restored))
    wq = restored.params["layers"]["wq"].get_value()
    assert wq.sharding.mesh.devices.shape == (1, 4, 2)
    assert wq.sharding == target.params["layers"]["wq"].get_value().sharding
    assert not wq.sharding.is_fully_replicated
