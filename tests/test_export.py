"""export_hf -> transformers.AutoModelForCausalLM / AutoTokenizer reload the same model.

Oracle: transformers' PyTorch forward on the exported dir must give our logits (LoRA merged into
the exported weights must equal our base + adapter forward), and the reloaded tokenizer must give
the same ids and keep the chat template."""

import json

import numpy as np
import pytest
import torch
from flax import nnx

from align_jax.models import Decoder, DecoderConfig, export_hf, hf_io, load_causal_lm

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, max_position_embeddings=128, bos_token_id=1,
            eos_token_id=2, pad_token_id=2)
CASES = {
    "untied_llama3_rope": DecoderConfig(**TINY, rope_scaling=("llama3", 8.0, 1.0, 4.0, 64)),
    "tied": DecoderConfig(**TINY, tie_word_embeddings=True),
    "lora": DecoderConfig(**TINY, lora_rank=4, lora_targets=("wq", "wv", "w_down")),
}
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")


def _random_model(cfg: DecoderConfig) -> Decoder:
    """Random values for every tensor, incl. norms (init ones) and LoRA B (init zeros), so each
    tensor's export path matters. Drawn in numpy and loaded into an abstract model: no JAX init
    compiles."""
    rng = np.random.default_rng(1)
    flat = {}
    for path, var in nnx.to_flat_state(nnx.state(hf_io.abstract_decoder(cfg))):
        name, shape = ".".join(str(p) for p in path), var.get_value().shape
        flat[name] = ((1.0 if "norm" in name else 0.0) + 0.1 * rng.normal(size=shape)).astype(np.float32)
    return hf_io.build_decoder(cfg, flat)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "hello", "world",
             "what", "is", "the", "capital", "of", "france", "?", "paris", "."]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", chat_template=TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def _ids():
    return np.random.default_rng(2).integers(0, 97, size=(2, 9)).astype(np.int32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_reloads_in_transformers(case, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = CASES[case]
    model = _random_model(cfg)
    if cfg.lora_rank:  # the adapters must actually change the function being exported
        base = hf_io.flat_params(model)
        assert np.abs(np.asarray(base["layers.lora_b_wq"])).max() > 0
    ids = _ids()
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, ids))
    out = export_hf(model, None, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    assert not any("lora" in k for k in written)
    assert written["tie_word_embeddings"] == cfg.tie_word_embeddings
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    diff = np.abs(ours - ref).max()
    assert diff <= 1e-4, diff
    assert np.abs(ref).max() > 1e-2
    if cfg.lora_rank:
        # merged weights == base + A @ B * scale, and differ from the base alone
        no_lora = {k: v for k, v in hf_io.flat_params(model).items() if "lora" not in k}
        merged = hf_io.merged_flat_params(model)
        w = np.asarray(no_lora["layers.wq"])
        a, b = (np.asarray(hf_io.flat_params(model)[f"layers.lora_{x}_wq"]) for x in "ab")
        np.testing.assert_allclose(merged["layers.wq"], w + a @ b * cfg.lora_scale, rtol=1e-6, atol=1e-7)
        assert np.abs(merged["layers.wq"] - w).max() > 1e-3


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = _tiny_tokenizer()
    model = _random_model(CASES["tied"])
    out = export_hf(model, tok, tmp_path / "out")
    back = AutoTokenizer.from_pretrained(out)
    assert back.chat_template == TEMPLATE
    msgs = [{"role": "user", "content": "what is the capital of france ?"}]
    a = tok.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"]
    b = back.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"]
    assert a == b and a[0] == tok.convert_tokens_to_ids("<|im_start|>") and 0 not in a
    for text in ["hello world", "paris is the capital .", "unknown words here"]:
        assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert (back.eos_token, back.bos_token, back.unk_token) == ("<|im_end|>", "<|im_start|>", "<unk>")
    # and our own loader reads the export back: same weights, tokenizer with template, pad = eos
    model2, tok2 = load_causal_lm(out)
    assert tok2.chat_template == TEMPLATE and tok2.pad_token == "<|im_end|>"
    a, b = hf_io.flat_params(model), hf_io.flat_params(model2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
