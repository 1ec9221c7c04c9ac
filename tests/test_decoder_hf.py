"""Our decoder, loaded through the public import path, vs HF transformers (PyTorch) logits.

Oracle: transformers' own LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM on the same
random weights (saved with `save_pretrained`, loaded with `load_causal_lm(dir)`)."""

import json

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from align_jax.models import hf_io, load_causal_lm
from align_jax.sharding import make_mesh, named_sharding

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
T = 10

CASES = {
    # original_max_position_embeddings=64 puts head_dim=16's frequencies in all three llama3
    # bands (kept / blended / slowed), so the scaling actually changes the logits
    "llama3_rope": transformers.LlamaConfig(
        **TINY, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    # window 4 < T=10: the window masks keys inside the sequence
    "mistral_window": transformers.MistralConfig(**TINY, sliding_window=4),
    # q/k/v biases and tied embeddings
    "qwen2_bias_tied": transformers.Qwen2Config(**TINY, tie_word_embeddings=True),
}


def _save_random(hf_cfg, path, **save_kw):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():  # norms are ones and biases zeros at init: make them matter
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path, **save_kw)
    return model


def _batch():
    """Rows 0-1 right-padded, rows 2-3 left-padded (one forward covers both layouts)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 97, size=(4, T)).astype(np.int32)
    lengths = [T, 6, 7, 4]
    mask = np.zeros((4, T), np.int32)
    mask[0, :lengths[0]] = 1
    mask[1, :lengths[1]] = 1
    mask[2, T - lengths[2]:] = 1
    mask[3, T - lengths[3]:] = 1
    return ids, mask


def _hf_logits(model, ids, mask):
    # HF generate's convention for padded rows: positions count real tokens only
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(pos, dtype=torch.long))
    return out.logits.float().numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hf(case, tmp_path):
    hf_model = _save_random(CASES[case], tmp_path)
    # the llama case also goes through a 2x2x2 mesh: results must not depend on placement
    mesh = make_mesh("2,2,2") if case == "llama3_rope" else None
    model, tok = load_causal_lm(tmp_path, mesh=mesh)
    assert tok is None  # no tokenizer files in this dir
    if case == "llama3_rope":
        assert model.cfg.rope_scaling[0] == "llama3"
        # placed by the rules table, as shard_model would, and actually split
        for path, var in nnx.to_flat_state(nnx.state(model)):
            val = var.get_value()
            want = named_sharding(var.get_metadata()["axes"], val.shape, mesh)
            assert val.sharding.is_equivalent_to(want, val.ndim), path
        w = model.layers.wq[...]
        assert w.sharding.shard_shape(w.shape) != w.shape
    if case == "mistral_window":
        assert model.cfg.sliding_window == 4
    if case == "qwen2_bias_tied":
        assert model.cfg.qkv_bias and model.cfg.tie_word_embeddings
    ids, mask = _batch()
    ours = np.asarray(nnx.jit(lambda m, x, k: m(x, k))(model, ids, mask))
    ref = _hf_logits(hf_model, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4, np.abs(ours - ref)[valid].max()
    # guard against a vacuous pass (e.g. everything ~0)
    assert np.abs(ref[valid]).max() > 1e-2


def test_sharded_index_checkpoint_and_dtype(tmp_path):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    _save_random(CASES["llama3_rope"], one)
    _save_random(CASES["llama3_rope"], sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    a, _ = load_causal_lm(one)
    b, _ = load_causal_lm(sharded)
    fa, fb = hf_io.flat_params(a), hf_io.flat_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)
    # dtype sets params and compute; explicit overrides win
    c, _ = load_causal_lm(one, dtype="bfloat16", remat=True)
    assert c.cfg.dtype == "bfloat16" and c.cfg.param_dtype == "bfloat16" and c.cfg.remat
    assert c.layers.wq[...].dtype == np.dtype("bfloat16")
    d, _ = load_causal_lm(one, dtype="bfloat16", param_dtype="float32", lora_rank=2)
    assert d.cfg.dtype == "bfloat16" and d.layers.wq[...].dtype == np.float32
    assert d.layers.lora_a_wq[...].shape == (2, 64, 2)


@pytest.mark.parametrize("field,value", [("model_type", "gpt2"), ("hidden_act", "relu")])
def test_unsupported_config_names_field(field, value, tmp_path):
    cfg = CASES["llama3_rope"].to_dict()
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=field):
        load_causal_lm(tmp_path)
