"""Token/sequence log-probs vs a direct HF-torch computation on a tiny random llama."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from align_jax.models import hf_io
from align_jax.train import logprobs as lpm
from align_jax.train.step import FAST_COMPILE

B, T, V = 3, 12, 97


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    d = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(d)
    model = hf_io.load_hf_dir(d)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (B, T)).astype(np.int32)
    am = np.ones((B, T), np.int32)
    am[1, 9:] = 0  # right padding
    am[2, :3] = 0  # left padding
    lm = am.copy()
    lm[0, :4] = 0  # prompts
    lm[1, :6] = 0
    lm[2, :5] = 0
    # HF does not derive positions from the mask; give it the ones our model uses.
    pos = np.maximum(np.cumsum(am, 1) - 1, 0)
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(am), position_ids=torch.tensor(pos)).logits
        logp_all = torch.log_softmax(logits.double()[:, :-1], -1)
        ref_tok = logp_all.gather(-1, torch.tensor(ids[:, 1:], dtype=torch.long)[..., None])[..., 0]
        ref_ent = -(logp_all.exp() * logp_all).sum(-1)
    mask = lm[:, 1:].astype(np.float64)
    return dict(model=model, ids=ids, am=am, lm=lm, logits=logits.numpy(),
                ref_tok=ref_tok.numpy() * mask, ref_ent=ref_ent.numpy() * mask, mask=mask)


@pytest.fixture(scope="module")
def ours(tiny):
    def f(model, ids, am, lm):
        full, ent = lpm.token_logps(model, ids, am, lm, return_entropy=True)
        chunked, ent_c = lpm.token_logps(model, ids, am, lm, chunk_size=5, return_entropy=True)
        seq = lpm.sequence_logps(model, ids, am, lm, chunk_size=4)
        return full, ent, chunked, ent_c, seq

    out = jax.jit(f, compiler_options=FAST_COMPILE)(tiny["model"], tiny["ids"], tiny["am"],
                                                    tiny["lm"])
    return jax.device_get(out)


def test_token_logps_match_hf(tiny, ours):
    full, ent, *_ = ours
    assert full.shape == (B, T - 1) and full.dtype == np.float32
    np.testing.assert_allclose(full, tiny["ref_tok"], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(ent, tiny["ref_ent"], atol=2e-5, rtol=1e-5)


def test_masks_respected(tiny, ours):
    full, ent, *_ = ours
    # Columns whose target is a prompt or padding token are exactly zero.
    assert np.all(full[tiny["mask"] == 0] == 0) and np.all(ent[tiny["mask"] == 0] == 0)
    assert np.all(full[tiny["mask"] == 1] < 0)
    # Row 1: target columns 5..7 (tokens 6..8); token 9+ is padding.
    np.testing.assert_array_equal(tiny["mask"][1], [0] * 5 + [1] * 3 + [0] * 3)


def test_sequence_logps_match_hf(tiny, ours):
    *_, seq = ours
    ref_sum = tiny["ref_tok"].sum(-1)
    cnt = tiny["mask"].sum(-1)
    np.testing.assert_allclose(seq.sum_b, ref_sum, atol=5e-5, rtol=1e-5)
    np.testing.assert_array_equal(seq.count_b, cnt)
    np.testing.assert_allclose(seq.mean_b, ref_sum / cnt, atol=1e-5, rtol=1e-5)


def test_chunked_equals_unchunked(ours):
    full, ent, chunked, ent_c, _ = ours
    np.testing.assert_allclose(chunked, full, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ent_c, ent, atol=1e-6, rtol=0)


def test_pure_variant_over_logits(tiny):
    tok, ent = lpm.token_logps_from_logits(jnp.asarray(tiny["logits"]), tiny["ids"], tiny["lm"],
                                           return_entropy=True)
    np.testing.assert_allclose(tok, tiny["ref_tok"], atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(ent, tiny["ref_ent"], atol=1e-5, rtol=1e-6)
    seq = lpm.sequence_logps_from_logits(jnp.asarray(tiny["logits"]), tiny["ids"], tiny["lm"])
    np.testing.assert_allclose(seq.sum_b, tiny["ref_tok"].sum(-1), atol=1e-5, rtol=1e-6)
    # loss_mask=None falls back to the attention mask (every real token after the first).
    tok_am = lpm.token_logps_from_logits(jnp.asarray(tiny["logits"]), tiny["ids"], None,
                                         tiny["am"])
    assert np.all(np.asarray(tok_am)[tiny["am"][:, 1:] == 0] == 0)
    assert np.all(np.asarray(tok_am)[tiny["am"][:, 1:] == 1] < 0)


def test_chunked_gradient_equals_unchunked(tiny):
    from align_jax.train.state import split_model

    bundle, params = split_model(tiny["model"])

    def loss(p, chunk):
        m = bundle.merge(p)
        seq = lpm.sequence_logps(m, tiny["ids"], tiny["am"], tiny["lm"], chunk_size=chunk)
        return seq.sum_b.sum()

    g = jax.jit(lambda p: (jax.grad(loss)(p, None), jax.grad(loss)(p, 3)),
                compiler_options=FAST_COMPILE)(params)
    g_full, g_chunk = jax.device_get(g)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    assert max(float(np.abs(a).max()) for a in jax.tree.leaves(g_full)) > 1e-2  # non-trivial
