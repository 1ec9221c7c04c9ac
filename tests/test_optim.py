"""Schedules, optimizer updates and clipping vs hand-computed values; gradient accumulation equals
the big-batch step; (sum, count) metric accumulation and the JSONL logger."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align_jax.models.config import DecoderConfig
from align_jax.models.llama import Decoder
from align_jax.train.metrics import MetricAccumulator, MetricsLogger, read_jsonl, to_sum_count
from align_jax.train.optim import make_optimizer, make_schedule
from align_jax.sharding import make_mesh
from align_jax.train.state import create_train_state, tree_shardings
from align_jax.train.step import FAST_COMPILE, lm_loss_fn, make_train_step


def test_schedules_hand_computed():
    lr, w, total = 1e-3, 10, 110
    cos = make_schedule(lr, "cosine", w, total)
    lin = make_schedule(lr, "linear", w, total)
    const = make_schedule(lr, "constant", w)
    cos_end = make_schedule(lr, "cosine", w, total, end_lr_ratio=0.1)
    # warm-up: lr * step / warmup
    for s, v in [(0, 0.0), (5, 5e-4), (9, 9e-4)]:
        for f in (cos, lin, const):
            assert float(f(s)) == pytest.approx(v, rel=1e-6, abs=1e-12)
    # cosine: lr/2 (1 + cos(pi (s - w) / (total - w)))
    assert float(cos(10)) == pytest.approx(1e-3, rel=1e-6)
    assert float(cos(35)) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-6)
    assert float(cos(60)) == pytest.approx(5e-4, rel=1e-6)
    assert float(cos(110)) == pytest.approx(0.0, abs=1e-12)
    assert float(cos(500)) == pytest.approx(0.0, abs=1e-12)
    assert float(cos_end(60)) == pytest.approx(1e-4 + 9e-4 * 0.5, rel=1e-6)
    assert float(cos_end(110)) == pytest.approx(1e-4, rel=1e-6)
    # linear: lr (1 - (s - w) / (total - w))
    assert float(lin(35)) == pytest.approx(7.5e-4, rel=1e-6)
    assert float(lin(110)) == pytest.approx(0.0, abs=1e-12)
    assert float(const(10_000)) == pytest.approx(1e-3, rel=1e-7)
    with pytest.raises(ValueError):
        make_schedule(lr, "cosine", 0, None)


def _params():
    return {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "attn_norm": jnp.array([1.0, 2.0])}


def _grads():
    # global norm = sqrt(9 + 16 + 0 + 0 + 0 + 0) = 5
    return {"w": jnp.array([[3.0, 0.0], [0.0, -4.0]]), "attn_norm": jnp.zeros(2)}


def _update(opt, g, p):
    # one compile instead of one per eager op
    return jax.jit(lambda g, p: opt.update(g, opt.init(p), p), compiler_options=FAST_COMPILE)(g, p)


def test_grad_clipping_hand_checked():
    opt = make_optimizer("sgd", lr=1.0, schedule="constant", grad_clip=1.0)
    p, g = _params(), _grads()
    u, _ = _update(opt, g, p)
    np.testing.assert_allclose(u["w"], [[-0.6, 0.0], [0.0, 0.8]], rtol=1e-6)
    # below the threshold: untouched
    opt10 = make_optimizer("sgd", lr=1.0, schedule="constant", grad_clip=10.0)
    u, _ = _update(opt10, g, p)
    np.testing.assert_allclose(u["w"], -np.asarray(g["w"]), rtol=1e-7)


def test_adamw_and_rmsprop_first_step_hand_checked():
    lr, wd, eps = 0.1, 0.5, 1e-8
    p, g = _params(), _grads()
    opt = make_optimizer("adamw", lr=lr, schedule="constant", weight_decay=wd, grad_clip=None,
                         eps=eps)
    u, _ = _update(opt, g, p)
    gw, w = np.asarray(g["w"]), np.asarray(p["w"])
    # bias-corrected first step: m = g, v = g^2 -> g / (|g| + eps); decay on matrices only
    # (rtol: 1 - 0.999 and its bias correction are rounded in float32, ~1e-5 relative)
    np.testing.assert_allclose(u["w"], -lr * (gw / (np.abs(gw) + eps)) - lr * wd * w, rtol=5e-5)
    np.testing.assert_allclose(u["attn_norm"], [0.0, 0.0], atol=1e-12)  # norm: no decay
    # rmsprop: nu = (1 - decay) g^2; update = -lr g / sqrt(nu + eps); decoupled decay
    opt = make_optimizer("rmsprop", lr=lr, schedule="constant", weight_decay=wd, grad_clip=None,
                         b2=0.9, eps=eps)
    u, _ = _update(opt, g, p)
    np.testing.assert_allclose(u["w"], -lr * gw / np.sqrt(0.1 * gw**2 + eps) - lr * wd * w,
                               rtol=1e-5)
    np.testing.assert_allclose(u["attn_norm"], [0.0, 0.0], atol=1e-12)
    # adafactor updates an NNX State of Variables (factored or not) keeping its structure,
    # and its lower-rank factored statistics get a (replicated) sharding, not an error.
    params = nnx.State({"layers": {"wq": nnx.Param(jnp.ones((2, 128, 132)),
                                                   axes=("layers", "embed", "heads")),
                                   "wk": nnx.Param(jnp.ones((2, 8, 64)),
                                                   axes=("layers", "embed", "kv_heads"))},
                        "final_norm": nnx.Param(jnp.ones((8,)), axes=("norm",))})
    opt = make_optimizer("adafactor", lr=1e-2, schedule="constant", weight_decay=0.1)
    st = opt.init(params)
    u, _ = jax.jit(opt.update, compiler_options=FAST_COMPILE)(
        jax.tree.map(jnp.ones_like, params), st, params)
    assert jax.tree.structure(u) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
    sh = jax.tree.leaves(tree_shardings(st, make_mesh("1,4,2")))
    assert len(sh) == len(jax.tree.leaves(st))
    assert any(not s.is_fully_replicated for s in sh)  # wk's unfactored, param-shaped statistic


def test_grad_accumulation_equals_big_batch():
    """k=2 micro-batches per update (optax.MultiSteps) == one step on their union, twice over
    (so the accumulator reset and the per-update schedule count are exercised)."""
    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8)
    rng = np.random.default_rng(0)
    big = [rng.integers(0, 64, (8, 10)).astype(np.int32) for _ in range(2)]

    def batch(ids):  # equal token counts per micro-batch, so the mean of means is the mean
        return dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids))

    # eps=1e-6: Adam normalises g / (|g| + eps), which turns the ~1e-9 rounding difference
    # between "mean of micro-batch means" and "big-batch mean" into O(lr) moves for gradients
    # below eps; a larger eps keeps that well under the 1e-6 tolerance.
    kw = dict(lr=1e-4, schedule="cosine", warmup_steps=0, total_steps=4, weight_decay=0.1,
              grad_clip=0.5, eps=1e-6)
    opt_acc = make_optimizer("adamw", grad_accum=2, **kw)
    opt_big = make_optimizer("adamw", **kw)
    s_acc, b_acc = create_train_state(Decoder(cfg, rngs=nnx.Rngs(0)), opt_acc, 0)
    s_big, b_big = create_train_state(Decoder(cfg, rngs=nnx.Rngs(0)), opt_big, 0)
    p0 = jax.device_get(s_big.params)
    step_acc = make_train_step(lm_loss_fn(), opt_acc, b_acc, compiler_options=FAST_COMPILE)
    step_big = make_train_step(lm_loss_fn(), opt_big, b_big, compiler_options=FAST_COMPILE)
    lrs_acc, lrs_big = [], []
    for ids in big:
        before = jax.device_get(s_acc.params)
        s_acc, m1 = step_acc(s_acc, batch(ids[:4]))
        # between the micro-steps of one update the params do not move
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(s_acc.params))):
            np.testing.assert_array_equal(a, b)
        s_acc, m2 = step_acc(s_acc, batch(ids[4:]))
        s_big, mb = step_big(s_big, batch(ids))
        lrs_acc.append(float(m2["lr"][0]))
        lrs_big.append(float(mb["lr"][0]))
        acc = MetricAccumulator()
        acc.update(m1)
        acc.update(m2)
        assert acc.compute()["nll"] == pytest.approx(float(mb["nll"][0] / mb["nll"][1]), rel=1e-5)
    assert lrs_acc == pytest.approx(lrs_big) and lrs_big[1] < lrs_big[0]
    assert int(s_acc.step) == 4 and int(s_big.step) == 2
    pa, pb = jax.device_get(s_acc.params), jax.device_get(s_big.params)
    moved = 0.0
    for a, b, c in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), jax.tree.leaves(p0)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        moved = max(moved, float(np.abs(b - c).max()))
    assert moved > 1e-4  # two updates of ~lr each really happened


def test_sum_count_metrics_and_logger(tmp_path):
    # token-mean over two micro-batches with different token counts: sum/count is exact
    m1 = {"nll": (jnp.array(6.0), jnp.array(3.0)), "acc": jnp.array([1.0, 0.0]), "x": 2.0}
    m2 = {"nll": (jnp.array(1.0), jnp.array(1.0)), "acc": jnp.array([1.0, 1.0, 1.0]), "x": 4.0}
    acc = MetricAccumulator()
    acc.update(m1)
    acc.update(m2)
    out = acc.reset()
    assert out == pytest.approx({"nll": 7.0 / 4.0, "acc": 4.0 / 5.0, "x": 3.0})
    assert not acc
    sc = jax.jit(to_sum_count)(m1)
    assert float(sc["acc"][0]) == 1.0 and float(sc["acc"][1]) == 2.0
    # logger: JSONL + TensorBoard, and a resume drops lines logged after the checkpoint
    with MetricsLogger(tmp_path / "log") as lg:
        for s in range(1, 6):
            lg.log(s, {"loss": float(s), "pair": (jnp.array(3.0), jnp.array(2.0))})
    with open(tmp_path / "log" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "loss": ')  # torn line from a kill
    assert any((tmp_path / "log" / "tb").iterdir())
    with MetricsLogger(tmp_path / "log", tensorboard=False, resume_step=3) as lg:
        lg.log(4, {"loss": 40.0})
    recs = read_jsonl(tmp_path / "log" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[1]["pair"] == 1.5 and recs[3]["loss"] == 40.0
    json.dumps(recs)
