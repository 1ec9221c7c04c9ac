"""Preference step glue on a tiny random llama (HF-saved, loaded through hf_io.load_hf_dir).

Oracles: log 2 at the start of DPO (policy = reference), ``sequence_logps`` computed separately,
a numpy LD-DPO split, the pure losses on separately computed log-probs, the base model for the
LoRA-off reference, one device for the mesh, and the disk cache against per-batch forwards."""

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from align_jax.algorithms import preference_step as ps
from align_jax.algorithms import reference_cache as rc
from align_jax.algorithms.preference import TrainConfig, attach_reference, train_preference
from align_jax.train.optim import OptimConfig
from align_jax.data import PreferencePair, RankedList, TokenizeConfig, pairs_to_unpaired
from align_jax.losses import (KTOConfig, ListLogps, ListwiseConfig, PrefConfig, RPOConfig,
                              UnpairedLogps, listwise_loss, unpaired_loss)
from align_jax.models import hf_io
from align_jax.sharding import make_mesh, place_batch
from align_jax.train.logprobs import sequence_logps, token_logps
from align_jax.train.metrics import compute
from align_jax.train.optim import make_optimizer
from align_jax.train.state import create_train_state
from align_jax.train.step import FAST_COMPILE, make_eval_step, make_train_step

WORDS = [f"q{i}" for i in range(16)] + [f"g{i}" for i in range(8)] + [f"b{i}" for i in range(8)]
VOCAB = {"[PAD]": 0, "[UNK]": 1, "</s>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
# pad_to_max: every batch is [B, 16] (few compiles)
TCFG = TokenizeConfig(max_prompt_len=4, max_completion_len=6, pad_multiple=16, pad_to_max=True)


def _tokenizer():
    tk = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="[PAD]",
                                   unk_token="[UNK]", bos_token="<s>")


def _pairs(n=16, seed=0):
    """Prompts of q-words; chosen answers use g-words, rejected ones b-words (learnable)."""
    r = np.random.default_rng(seed)

    def words(p, k):
        return " ".join(f"{p}{j}" for j in r.integers(0, 8 if p != "q" else 16, k))

    return [PreferencePair(words("q", 2), words("g", r.integers(1, 6)), words("b", r.integers(1, 6)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)
    d = tmp_path_factory.mktemp("tiny_llama")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tok = _tokenizer()
    model = hf_io.load_hf_dir(d)
    data = rc.PrefData("pair", _pairs(), tok, TCFG)
    cache_dir = tmp_path_factory.mktemp("cache")
    cached = attach_reference(model, data, PrefConfig(), "cache", cache_dir=cache_dir,
                              compiler_options=FAST_COMPILE)
    return dict(dir=d, tok=tok, model=model, data=data, cached=cached, cache_dir=cache_dir)


def fresh(model):
    """An independent copy (train steps donate their weights)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _seq(graphdef, state, ids, attn, lm):
    return sequence_logps(nnx.merge(graphdef, state), ids, attn, lm)


def seq(model, ids, attn, lm):
    """Oracle: the response log-likelihood of each row, computed on its own."""
    s = _seq(*nnx.split(model), ids, attn, lm)
    return np.asarray(s.sum_b), np.asarray(s.count_b)


def _offsets(data, seed):
    """Arbitrary reference values (cached values + noise): log-ratios ≠ 0, so losses are not flat."""
    r = np.random.default_rng(seed)
    return {k: v + r.normal(0, 2.0, v.shape).astype(np.float32)
            for k, v in data.arrays.items() if k.startswith("ref_")}


# ----------------------------------------------------------------------------- DPO end to end


def test_dpo_run_raises_accuracy_and_margin(tiny, tmp_path):
    data = tiny["cached"]
    cfg = TrainConfig(steps=25, batch_size=8, optim=OptimConfig(lr=1e-3), save_every=1000,
                      progress=False)
    loss_fn = ps.make_pair_loss_fn(PrefConfig(), completion_len=TCFG.max_completion_len)
    res = train_preference(fresh(tiny["model"]), data, loss_fn, cfg,
                           tmp_path / "run", eval_data=data, compiler_options=FAST_COMPILE)
    b, a = res.before, res.after
    # policy == reference at the start: every reward is 0 and the loss is exactly log 2
    assert b["loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    assert b["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert b["rewards/accuracies"] == 0.5  # every pair ties: a fair coin (losses.accuracy)
    assert a["rewards/accuracies"] >= 0.9
    assert a["rewards/margins"] > 0.3
    assert a["loss"] < 0.6
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 25 and (tmp_path / "run" / "curves.png").exists()
    # step 1 (still the reference, batch shapes of training) agrees with the held-out "before"
    assert json.loads(lines[0])["train/rewards/accuracies"] == b["rewards/accuracies"] == 0.5


# ----------------------------------------------------------------------------- reference cache


def test_reference_cache_equals_per_batch_and_is_reused(tiny, monkeypatch):
    model, data = tiny["model"], tiny["data"]
    calls = []
    real = rc.compute_reference
    monkeypatch.setattr(rc, "compute_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = rc.precompute_reference(model, data, batch_size=8, cache_dir=tiny["cache_dir"],
                                    compiler_options=FAST_COMPILE)
    assert first.hit and calls == []  # the fixture already wrote this cache
    mtime = os.path.getmtime(first.path)
    other = rc.PrefData("pair", _pairs(16, seed=1), tiny["tok"], TCFG)  # different data → new key
    miss = rc.precompute_reference(model, other, batch_size=8, cache_dir=tiny["cache_dir"],
                                   compiler_options=FAST_COMPILE)
    assert not miss.hit and calls == [1] and miss.path != first.path
    again = rc.precompute_reference(model, other, batch_size=8, cache_dir=tiny["cache_dir"],
                                    compiler_options=FAST_COMPILE)
    assert again.hit and calls == [1] and os.path.getmtime(first.path) == mtime
    for k in miss.arrays:
        np.testing.assert_array_equal(again.arrays[k], miss.arrays[k])

    # per-batch forward (other batch composition, longer padding) == cached values
    idx = np.array([5, 0, 11, 3])
    batch = {k: jnp.asarray(v) for k, v in dataclasses.replace(data, length=32).batch(idx).items()}
    vals = nnx.jit(lambda m, b: ps.reference_pair_values(m, b))(model, batch)
    for k, v in vals.items():
        np.testing.assert_allclose(np.asarray(v), first.arrays[k][idx], atol=1e-5, rtol=0,
                                   err_msg=k)

    # inside the step: reference forwarded per batch (frozen copy) == read from the cache
    loss_fn = ps.make_pair_loss_fn(PrefConfig(loss="ipo", beta=0.5))
    opt = make_optimizer("sgd", 0.0, "constant")
    state, bundle = create_train_state(fresh(model), opt)
    ref_bundle = ps.RefModelBundle.wrap(bundle, jax.tree.map(jnp.copy, state.params))
    trained = jax.tree.map(lambda x: x * 1.3, state.params)  # policy ≠ reference
    state = state.replace(params=trained)
    m_batch = compute(make_eval_step(loss_fn, ref_bundle, compiler_options=FAST_COMPILE)(
        state, place_batch(data.batch(idx), None)))
    m_cache = compute(make_eval_step(loss_fn, bundle, compiler_options=FAST_COMPILE)(
        state, place_batch(tiny["cached"].batch(idx), None)))
    assert abs(m_batch["rewards/margins"]) > 1e-3
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert m_batch[k] == pytest.approx(m_cache[k], abs=1e-5), k


@pytest.mark.parametrize("loss", ["simpo", "cpo", "orpo", "sft", ("simpo", "sft")])
def test_reference_free_losses_never_compute_reference(tiny, monkeypatch, loss):
    def boom(*a, **k):
        raise AssertionError("reference log-probs computed")

    monkeypatch.setattr(ps, "reference_pair_values", boom)
    monkeypatch.setattr(rc, "precompute_reference", boom)
    cfg = PrefConfig(loss=loss, beta=2.0)
    data = tiny["data"]
    assert attach_reference(tiny["model"], data, cfg, "cache") is data
    batch = jax.tree.map(jnp.asarray, data.batch(np.arange(4)))  # no ref_* keys, no ref model
    graphdef, state = nnx.split(tiny["model"])

    def run(c, st, b):  # a reference model IS available; it must not be used
        m = nnx.merge(graphdef, st)
        return ps.make_pair_loss_fn(c)(ps.PolicyRef(m, m), b, None)[0]

    assert jax.eval_shape(functools.partial(run, cfg), state, batch).shape == ()
    # the same set-up with a reference-based loss does reach the reference (the check can fail)
    with pytest.raises(AssertionError, match="reference log-probs computed"):
        jax.eval_shape(functools.partial(run, PrefConfig()), state, batch)


def test_lora_off_reference_equals_base_model(tiny):
    lora = hf_io.load_hf_dir(tiny["dir"], lora_rank=2, lora_targets=("wq", "wv"))
    r = np.random.default_rng(0)
    for name in ("lora_b_wq", "lora_b_wv"):  # nonzero adapters: the policy differs from the base
        v = getattr(lora.layers, name)
        v[...] = jnp.asarray(r.normal(0, 0.5, v[...].shape), v[...].dtype)
    batch = jax.tree.map(jnp.asarray, tiny["data"].batch(np.arange(8)))

    @nnx.jit
    def run(lora_model, base_model, b):
        return (ps.reference_pair_values(ps.lora_reference(lora_model), b),
                ps.reference_pair_values(base_model, b), ps.pair_forward(lora_model, b))

    ref, base, pol = run(lora, tiny["model"], batch)
    assert float(jnp.abs(pol["chosen_logps"] - base["ref_chosen_logps"]).max()) > 1e-2
    for k in base:
        np.testing.assert_allclose(np.asarray(ref[k]), np.asarray(base[k]), atol=1e-5, err_msg=k)
    # adapters of the policy are untouched (lora_reference works on a copy of the state)
    assert float(jnp.abs(lora.layers.lora_b_wq[...]).max()) > 0.1


def test_step_sequence_logps_equal_separate_sequence_logps(tiny):
    """The step's per-example log-probs (one [2B, T] forward; all positions, or the LM head on the
    response window only) == sequence_logps on each side alone; LD-DPO tails == a numpy split at
    min(|y_w|, |y_l|); a too-short window reports its overflow."""
    model = tiny["model"]
    idx = np.arange(8)
    hb = tiny["cached"].batch(idx)
    batch = jax.tree.map(jnp.asarray, hb)
    full, win, short = nnx.jit(lambda m, b: [ps.pair_forward(m, b, ps.Fwd(completion_len=w))
                                             for w in (None, 6, 3)])(model, batch)
    for side in ("chosen", "rejected"):
        s, n = seq(model, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"],
                   batch[f"{side}_loss_mask"])
        for fwd in (full, win):
            np.testing.assert_allclose(np.asarray(fwd[f"{side}_logps"]), s, atol=1e-5, rtol=0)
            np.testing.assert_array_equal(np.asarray(fwd[f"{side}_len"]), n)
        np.testing.assert_allclose(np.asarray(win[f"{side}_tail_logps"]),
                                   np.asarray(full[f"{side}_tail_logps"]), atol=1e-5)
    assert float(win["overflow"].sum()) == 0.0
    n_all = hb["chosen_loss_mask"].sum(1) + hb["rejected_loss_mask"].sum(1)
    over = (np.maximum(hb["chosen_loss_mask"].sum(1) - 3, 0)
            + np.maximum(hb["rejected_loss_mask"].sum(1) - 3, 0))
    assert over.sum() > 0 and n_all.max() > 6
    np.testing.assert_array_equal(np.asarray(short["overflow"]), over)
    fwd = full
    # LD-DPO tails, by hand
    tok = nnx.jit(lambda m, b: {s: token_logps(m, b[f"{s}_input_ids"], b[f"{s}_attention_mask"],
                                               b[f"{s}_loss_mask"]) for s in ("chosen", "rejected")}
                  )(model, batch)
    for side, other in (("chosen", "rejected"), ("rejected", "chosen")):
        tok_lp = np.asarray(tok[side])
        mask = hb[f"{side}_loss_mask"][:, 1:].astype(bool)
        n_other = hb[f"{other}_loss_mask"].sum(1)
        want = [tok_lp[i][mask[i]][min(mask[i].sum(), n_other[i]):].sum() for i in range(len(idx))]
        np.testing.assert_allclose(np.asarray(fwd[f"{side}_tail_logps"]), want, atol=1e-5)
    # and through the jitted eval step: summed logps/chosen metric == the separate sums
    opt = make_optimizer("sgd", 0.0, "constant")
    state, bundle = create_train_state(fresh(model), opt)
    m = make_eval_step(ps.make_pair_loss_fn(PrefConfig()), bundle,
                       compiler_options=FAST_COMPILE)(state, place_batch(hb, None))
    s, _ = seq(model, batch["chosen_input_ids"], batch["chosen_attention_mask"],
               batch["chosen_loss_mask"])
    assert float(m["logps/chosen"][0]) == pytest.approx(float(s.sum()), abs=1e-4)


# ----------------------------------------------------------------------------- RPO, KTO, listwise


def _rpo_step(model, batch, mesh):
    opt = make_optimizer("adamw", 1e-3, "constant", grad_clip=1.0, eps=1e-6)
    state, bundle = create_train_state(fresh(model), opt, 0, mesh)
    step = make_train_step(ps.make_rpo_loss_fn(RPOConfig(group_size=4, tau=0.5)), opt, bundle, mesh,
                           compiler_options=FAST_COMPILE)
    state, m = step(state, place_batch(batch, mesh))
    return compute(m), jax.device_get(state.params)


def test_rpo_step_on_8_devices_equals_one_device(tiny):
    data = tiny["cached"].with_arrays(**_offsets(tiny["cached"], 1))
    emb = np.random.default_rng(2).normal(size=(len(data), 8)).astype(np.float32)
    batch = data.with_arrays(emb=emb).batch(np.arange(8))  # 2 groups of 4
    with jax.default_device(jax.devices()[0]):
        m1, p1 = _rpo_step(tiny["model"], batch, None)
    m8, p8 = _rpo_step(tiny["model"], batch, make_mesh("8,1,1"))
    assert np.isfinite(m1["loss"]) and m1["loss"] > 0.1 and m1["grad_norm"] > 1e-4
    for k in ("loss", "grad_norm", "rpo/row_loss", "rewards/margins"):
        assert m8[k] == pytest.approx(m1[k], abs=1e-5, rel=1e-5), k
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_kto_step_loss_equals_pure_loss(tiny):
    model = tiny["model"]
    items = pairs_to_unpaired(_pairs(4, seed=3))  # 8 items, both labels
    data = rc.PrefData("unpaired", items, tiny["tok"], TCFG, kl=True)
    assert all(data.kl_partners != np.arange(len(data)))  # mismatched pairs
    data = attach_reference(model, data, KTOConfig(), "cache", cache_dir=tiny["cache_dir"],
                            compiler_options=FAST_COMPILE)
    data = data.with_arrays(**_offsets(data, 4))
    hb = data.batch(np.arange(8))
    s, _ = seq(model, hb["input_ids"], hb["attention_mask"], hb["loss_mask"])
    kl_s, _ = seq(model, hb["kl_input_ids"], hb["kl_attention_mask"], hb["kl_loss_mask"])
    cfg = KTOConfig(beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    want, _ = unpaired_loss(UnpairedLogps(s, hb["ref_logps"], hb["labels"], kl_s,
                                          hb["ref_kl_logps"]), cfg)
    opt = make_optimizer("adamw", 1e-3, "constant")
    state, bundle = create_train_state(fresh(model), opt)
    step = make_train_step(ps.make_kto_loss_fn(cfg), opt, bundle, compiler_options=FAST_COMPILE)
    state, m = step(state, place_batch(hb, None))
    got = compute(m)
    assert np.isfinite(got["loss"]) and got["grad_norm"] > 0
    assert got["loss"] == pytest.approx(float(np.mean(want)), abs=1e-5)


def test_listwise_step_loss_equals_pure_loss(tiny):
    model = tiny["model"]
    r = np.random.default_rng(5)
    lists = [RankedList(p.prompt, [p.chosen, p.rejected, "g1 b2"][: 3 - (i == 1)],
                        [2.0, 0.0, 1.0][: 3 - (i == 1)]) for i, p in enumerate(_pairs(4, seed=6))]
    data = rc.PrefData("ranked", lists, tiny["tok"], TCFG)
    assert data.tok_cfg.max_responses == 3
    data = attach_reference(model, data, ListwiseConfig(), "cache", cache_dir=tiny["cache_dir"],
                            compiler_options=FAST_COMPILE)
    data = data.with_arrays(ref_logps=data.arrays["ref_logps"]
                            + r.normal(0, 2, (4, 3)).astype(np.float32))
    hb = data.batch(np.arange(4))
    assert not hb["valid_bk"][1, 2]  # the short list is masked
    b, k, t = hb["input_ids"].shape
    s, n = seq(model, *(hb[x].reshape(b * k, t) for x in ("input_ids", "attention_mask",
                                                          "loss_mask")))
    cfg = ListwiseConfig(loss="plackett_luce", beta=0.5)
    want, _ = listwise_loss(ListLogps(s.reshape(b, k), hb["ref_logps"], n.reshape(b, k),
                                      hb["valid_bk"], hb["scores"]), cfg)
    opt = make_optimizer("adamw", 1e-3, "constant")
    state, bundle = create_train_state(fresh(model), opt)
    step = make_train_step(ps.make_listwise_loss_fn(cfg), opt, bundle,
                           compiler_options=FAST_COMPILE)
    state, m = step(state, place_batch(hb, None))
    got = compute(m)
    assert np.isfinite(got["loss"]) and got["grad_norm"] > 0
    assert got["loss"] == pytest.approx(float(np.mean(want)), abs=1e-5)
