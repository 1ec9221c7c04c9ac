"""KV-cache sampler (jitted prefill + lax.while_loop decode) and logit filters."""

from align_jax.sampling.filters import (
    apply_temperature,
    min_p_filter,
    process_logits,
    sample_logits,
    top_k_filter,
    top_p_filter,
)
from align_jax.sampling.sampler import (
    SampleOutput,
    SamplingConfig,
    decode_responses,
    prompt_token_ids,
    generate,
    left_pad,
    sample_texts,
    stream_generate,
    tokenizer_defaults,
)

__all__ = [
    "SampleOutput", "SamplingConfig", "apply_temperature", "decode_responses", "prompt_token_ids",
    "generate", "left_pad", "min_p_filter", "process_logits", "sample_logits", "sample_texts",
    "stream_generate", "tokenizer_defaults", "top_k_filter", "top_p_filter",
]
