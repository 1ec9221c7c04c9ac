"""Mesh invariance: forward and one AdamW step on 8 simulated CPU devices equal one device."""

import jax
import numpy as np
import pytest
from flax import nnx

from align_jax.models.config import DecoderConfig
from align_jax.models.llama import Decoder
from align_jax.sharding import make_mesh, place_batch
from align_jax.train.metrics import compute
from align_jax.train.optim import make_optimizer
from align_jax.train.state import create_train_state
from align_jax.train.step import FAST_COMPILE, lm_loss_fn, make_train_step

CFG = DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16)
MESHES = ["8,1,1", "2,2,2", "1,4,2"]


def _batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)
    am = np.ones((8, 16), np.int32)
    am[1, 11:] = 0
    am[5, :4] = 0
    lm = am.copy()
    lm[:, :5] = 0
    return dict(input_ids=ids, attention_mask=am, loss_mask=lm)


def _run(mesh):
    """(step metrics, params before and after one step, sharding of a weight, step count)."""
    batch = _batch()
    # Adam's first update is -lr * g / (|g| + eps): scale-free, so gradients near eps (whose last
    # bits depend on the reduction order of the mesh) move by O(lr). eps=1e-6 keeps that noise
    # ~1e-7 while every gradient that matters still moves its weight by ~lr.
    opt = make_optimizer("adamw", lr=1e-3, schedule="constant", weight_decay=0.1, grad_clip=1.0,
                         eps=1e-6)
    state, bundle = create_train_state(Decoder(CFG, rngs=nnx.Rngs(0)), opt, 0, mesh)
    b = place_batch(batch, mesh)

    p0 = jax.device_get(state.params)
    step = make_train_step(lm_loss_fn(), opt, bundle, mesh, compiler_options=FAST_COMPILE)
    wq_sharding = state.params["layers"]["wq"].get_value().sharding
    state, metrics = step(state, b)
    return compute(metrics), p0, jax.device_get(state.params), wq_sharding, int(state.step)


@pytest.fixture(scope="module")
def reference():
    return _run(None)  # no mesh: everything on device 0


@pytest.mark.parametrize("mesh_spec", MESHES)
def test_step_matches_single_device(reference, mesh_spec):
    mesh = make_mesh(mesh_spec)
    m, _, params, wq_sharding, step = _run(mesh)
    m0, init0, params0, _, _ = reference
    assert step == 1
    # The mesh really shards the weights (fsdp on `embed`, tensor on `heads`) where it can.
    if mesh.shape["fsdp"] > 1 or mesh.shape["tensor"] > 1:
        assert not wq_sharding.is_fully_replicated
    for k in ("loss", "nll", "grad_norm"):
        np.testing.assert_allclose(m[k], m0[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert m["tokens"] == m0["tokens"] == float(_batch()["loss_mask"][:, 1:].sum())
    flat0 = jax.tree_util.tree_flatten_with_path(params0)[0]
    flat = jax.tree.leaves(params)
    assert len(flat0) == len(flat)
    for (path, a), b in zip(flat0, flat):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
    # and the step did move the weights (by ~lr = 1e-3)
    assert max(float(np.abs(a - b).max()) for (_, a), b in
               zip(flat0, jax.tree.leaves(init0))) > 5e-4
