"""Qwen3, Gemma 2, Gemma 3 (text) and Phi-3 vs transformers (PyTorch) on tiny random checkpoints.

Per family: logits of a batch with right- and left-padded rows longer than the sliding window,
20 greedy tokens of both decode paths vs `generate` (plus the sampler's log-probs vs a
teacher-forced forward), export -> transformers -> same logits (LoRA merged), and a 2x2x2 mesh
giving the unsharded results. Every config sets the switches its family adds: explicit head_dim
!= hidden/heads, mixed sliding/global layers, distinct local RoPE base + linear scaling on
global layers (Gemma 3), small soft-caps that bite (Gemma 2), LongRoPE with partial rotary and
a window on every layer (Phi-3)."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from align_jax.errors import ConfigError
from align_jax.models import export_hf, load_causal_lm
from align_jax.models.llama import LoRAParam
from align_jax.sampling import SamplingConfig, generate
from align_jax.sharding import make_mesh
from test_decoder_hf import _batch, _hf_logits, _save_random
from test_sampling import _torch_one_thread

V, N, PAD = 97, 20, 0
TINY = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2, pad_token_id=PAD, initializer_range=0.1)
MIXED = ["sliding_attention", "full_attention"]


def _phi3_rope(orig):
    # partial_rotary_factor 0.5 of head_dim 16: 4 frequencies, each with its own factors
    return dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                 "partial_rotary_factor": 0.5,
                                 "short_factor": [1.0, 1.5, 2.0, 3.0],
                                 "long_factor": [2.0, 4.0, 8.0, 16.0]},
                original_max_position_embeddings=orig, sliding_window=5)


def hf_config(family, **kw):
    if family == "qwen3":  # head_dim 24 (hidden/heads = 16); layer 1 slides (max_window_layers)
        return transformers.Qwen3Config(**TINY, head_dim=24, use_sliding_window=True,
                                        sliding_window=4, max_window_layers=1, **kw)
    if family == "gemma2":
        return transformers.Gemma2Config(**TINY, head_dim=16, sliding_window=4,
                                         query_pre_attn_scalar=24, attn_logit_softcapping=1.5,
                                         final_logit_softcapping=4.0, **kw)
    if family == "gemma3":
        rope = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}
        return transformers.Gemma3TextConfig(**TINY, head_dim=16, sliding_window=4,
                                             layer_types=MIXED, query_pre_attn_scalar=16,
                                             rope_parameters=rope, **kw)
    if family == "phi3":  # original_max_position_embeddings 2: every row uses the long factors
        return transformers.Phi3Config(**TINY, **{**_phi3_rope(2), **kw})
    raise KeyError(family)


FAMILIES = ("gemma2", "gemma3", "phi3", "qwen3")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    hf = _save_random(hf_config(request.param), d)
    model, _ = load_causal_lm(d)
    return request.param, hf, model, d


def _prompts(lengths=(3, 7, 12)):
    rng = np.random.default_rng(0)
    P = max(lengths)
    ids = np.full((len(lengths), P), PAD, np.int32)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):  # left padded, different lengths
        ids[r, P - n:] = rng.integers(3, V, size=n)
        mask[r, P - n:] = 1
    return ids, mask


def _hf_greedy(hf, ids, mask):
    with torch.no_grad(), _torch_one_thread():
        out = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=N,
                          min_new_tokens=N, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    return out[:, ids.shape[1]:].numpy()


GREEDY = SamplingConfig(max_new_tokens=N, greedy=True, prompt_bucket=4, pad_token_id=PAD,
                        eos_token_ids=())


def _forward(model, ids, mask):
    return np.asarray(nnx.jit(lambda m, x, k: m(x, k))(model, ids, mask))


def test_logits_match_hf(family):
    name, hf, model, _ = family
    cfg = model.cfg
    if name != "phi3":
        assert cfg.local_layers == (name != "qwen3", name == "qwen3")  # mixed layers
    ids, mask = _batch()  # T = 10 > every window
    ours = _forward(model, ids, mask)
    ref = _hf_logits(hf, ids, mask)
    valid = mask.astype(bool)
    diff = np.abs(ours - ref)[valid].max()
    assert diff <= 1e-4, diff
    assert np.abs(ref[valid]).max() > 1e-1


def test_greedy_matches_hf_generate_and_logprobs(family):
    name, hf, model, _ = family
    ids, mask = _prompts()
    ref = _hf_greedy(hf, ids, mask)
    outs = [jax.tree.map(np.asarray, generate(model, ids, mask, jax.random.key(0),
                                              GREEDY.replace(unroll_layers=u)))
            for u in (True, False)]  # per-layer CPU decode, layer-scan decode
    for out in outs:
        np.testing.assert_array_equal(out.tokens, ref)
    # the sampler's log-probs are the teacher-forced forward's
    out = outs[0]
    full = np.concatenate([out.prompt_ids, out.tokens], axis=1)
    full_mask = np.concatenate([out.prompt_mask, out.mask], axis=1)
    P = out.prompt_ids.shape[1]
    logits = _forward(model, full, full_mask)[:, P - 1:-1]
    lp = jax.nn.log_softmax(logits, -1)
    want = np.take_along_axis(np.asarray(lp), out.tokens[..., None], -1)[..., 0]
    for o in outs:
        np.testing.assert_allclose(o.logprobs_raw, want, atol=1e-4)


def test_phi3_longrope_switch_mid_generation(tmp_path):
    """Equal-length prompts (8) + 20 tokens, original_max_position_embeddings 16: the prefill
    and the first steps use the short factors, positions >= 16 the long ones, identically on
    both decode paths. transformers recomputes its whole cache with the long factors at that
    step (our cache keeps its keys, see ops.rope_cos_sin), so only the tokens before it are
    compared with `generate`."""
    hf = _save_random(hf_config("phi3", original_max_position_embeddings=16), tmp_path)
    model, _ = load_causal_lm(tmp_path)
    ids, mask = _prompts((8, 8))
    ref = _hf_greedy(hf, ids, mask)
    outs = [np.asarray(generate(model, ids, mask, jax.random.key(0),
                                GREEDY.replace(unroll_layers=u)).tokens) for u in (True, False)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0][:, :9], ref[:, :9])  # token 9 is the first at 16


def _randomise_lora(model):
    """LoRA B starts at zero; give it values so the merged export differs from the base."""
    lora = nnx.state(model, LoRAParam)
    leaves, tdef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    std = 0.05 / model.cfg.lora_scale  # a change the size of the base weights' (0.1)
    nnx.update(model, jax.tree.unflatten(
        tdef, [std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]))


def test_export_reloads_in_transformers(family, tmp_path):
    _, _, base, src = family
    targets = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    model, _ = load_causal_lm(src, lora_rank=2, lora_targets=targets)
    _randomise_lora(model)
    ids, mask = _batch()
    ours = _forward(model, ids, mask)
    assert np.abs(ours - _forward(base, ids, mask)).max() > 1e-2  # the adapters matter
    out = export_hf(model, None, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == model.cfg.model_type
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = _hf_logits(hf, ids, mask)
    valid = mask.astype(bool)
    diff = np.abs(ours - ref)[valid].max()
    assert diff <= 1e-4, diff
    # and our loader reads the export back to the same config (LoRA merged away)
    back, _ = load_causal_lm(out)
    assert back.cfg == model.cfg.replace(lora_rank=0, lora_targets=back.cfg.lora_targets)


def test_sharded_equals_unsharded(family):
    _, _, model, src = family
    mesh = make_mesh("2,2,2")
    sharded, _ = load_causal_lm(src, mesh=mesh)
    assert sharded.layers.wq[...].sharding.shard_shape(sharded.layers.wq[...].shape) != \
        sharded.layers.wq[...].shape
    ids, mask = _batch()
    np.testing.assert_allclose(_forward(sharded, ids, mask), _forward(model, ids, mask),
                               atol=1e-5)
    ids, mask = _prompts()
    want = generate(model, ids, mask, jax.random.key(0), GREEDY)
    got = generate(sharded, ids, mask, jax.random.key(0), GREEDY, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))


@pytest.mark.parametrize("family,field,value", [
    ("gemma2", "use_bidirectional_attention", True),
    ("gemma3", "layer_types", ["chunked_attention", "full_attention"]),
    ("gemma3", "rope_parameters", {"full_attention": {"rope_type": "default"},
                                   "sliding_attention": {"rope_type": "yarn", "factor": 2.0}}),
    ("phi3", "rope_scaling", {"type": "dynamic", "factor": 2.0}),
    ("qwen3", "hidden_act", "relu"),
])
def test_unsupported_config_is_one_line_naming_the_field(family, field, value, tmp_path):
    d = hf_config(family).to_dict()
    d[field] = value
    if field == "rope_scaling":
        d.pop("rope_parameters")
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=field) as e:
        load_causal_lm(tmp_path)
    assert "\n" not in str(e.value)
