"""Timing helper shared by the bench scripts (imported as a sibling module: the scripts run as
`python bench/<name>.py`, which puts bench/ on sys.path)."""

from __future__ import annotations

import time


def time_calls(fn, steps: int) -> list[float]:
    """Wall seconds of `steps` calls of `fn()` (fn must block until its work is done)."""
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def tiny_llama_dir(path):
    """A 2-layer random ``LlamaForCausalLM`` saved at ``path`` with the bundled SmolLM2 tokenizer
    (vocab 49152; no GGUF weights dequantised): the benches' seconds-long ``--tiny`` model."""
    import transformers

    from align_jax.models.gguf_io import gguf_metadata, open_gguf
    from align_jax.models.resolve import default_policy_path
    from align_jax.models.tokenizer import tokenizer_from_gguf_metadata

    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    tokenizer_from_gguf_metadata(gguf_metadata(open_gguf(default_policy_path()))
                                 ).save_pretrained(str(path))
    return path
