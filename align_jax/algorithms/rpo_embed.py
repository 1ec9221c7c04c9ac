"""Prompt embeddings for RPO's distance weights (arXiv 2402.10958), computed once per dataset.

e = L2-normalise(masked mean over real tokens of the encoder's last hidden state) — the
sentence-transformers recipe of all-MiniLM-L6-v2 (the default encoder, bundled offline; any BERT /
RoBERTa dir works). ``rpo_loss`` re-normalises and stops the gradient anyway; embeddings are data.

What text is embedded is [open] in the paper: the whole prompt (all turns, "role: content" lines for
chat prompts), LEFT-truncated to ``max_length`` encoder tokens so the latest user turn — the one the
responses answer — is always kept. Identical prompts are embedded once.

The result is cached like the reference log-probs (``reference_cache.cached_arrays``), keyed by the
encoder weights, its tokenizer, the texts and the embedding settings.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.algorithms.reference_cache import CacheResult, cached_arrays, params_fingerprint
from align_jax.data.pref_data import combine_digest, tokenizer_fingerprint
from align_jax.data.tokenize import pow2_bucket

POOLING = "mean_l2"


def prompt_to_text(prompt) -> str:
    """A string prompt as is; a message list as "role: content" lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def mean_pool_l2(h_btd, mask_bt):
    """Masked mean over tokens, then L2 normalisation (float32). Pure."""
    m = mask_bt.astype(jnp.float32)[..., None]
    e = jnp.sum(h_btd.astype(jnp.float32) * m, axis=1) / jnp.maximum(m.sum(1), 1.0)
    return e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, -1, keepdims=True), 1e-24))


def embed_texts(texts: Sequence[str], encoder=None, tokenizer=None, *, batch_size: int = 32,
                max_length: int = 256) -> np.ndarray:
    """[N, E] float32 unit-norm embeddings (no cache). ``encoder``/``tokenizer`` default to
    ``align_jax.models.load_encoder()`` (all-MiniLM-L6-v2)."""
    if encoder is None or tokenizer is None:
        from align_jax.models import load_encoder

        encoder, tokenizer = load_encoder()
    max_length = min(int(max_length), int(encoder.config.max_length))
    uniq = sorted(set(texts))
    where = {t: i for i, t in enumerate(uniq)}
    old_side = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = "left"  # keep the end of long prompts (the latest turn)
    try:
        ids = tokenizer(uniq, add_special_tokens=True, truncation=True,
                        max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = old_side
    graphdef, state = nnx.split(encoder)

    @jax.jit
    def run(st, ids_bt, mask_bt):
        h = nnx.merge(graphdef, st)(ids_bt, mask_bt, all_layers=False)
        return mean_pool_l2(h, mask_bt)

    pad = int(getattr(tokenizer, "pad_token_id", None) or 0)
    out = np.zeros((len(uniq), encoder.config.hidden_size), np.float32)
    for s in range(0, len(uniq), batch_size):
        chunk = ids[s:s + batch_size]
        t = min(pow2_bucket(max(len(x) for x in chunk)), max_length)
        b = pow2_bucket(len(chunk), 1)  # few distinct shapes → few compiles
        ids_bt = np.full((b, t), pad, np.int32)
        mask_bt = np.zeros((b, t), np.int32)
        for i, x in enumerate(chunk):
            ids_bt[i, :len(x)], mask_bt[i, :len(x)] = x, 1
        mask_bt[len(chunk):, 0] = 1  # padding rows: one token, so their mean is finite
        out[s:s + len(chunk)] = np.asarray(run(state, ids_bt, mask_bt))[:len(chunk)]
    return out[[where[t] for t in texts]]


def prompt_embeddings(prompts: Sequence[Any], encoder=None, tokenizer=None, *,
                      batch_size: int = 32, max_length: int = 256,
                      cache_dir: str | os.PathLike | None = None, use_cache: bool = True
                      ) -> CacheResult:
    """Embeddings [N, E] of the prompts (``CacheResult.arrays["emb"]``), from the disk cache or
    computed once and stored."""
    if encoder is None or tokenizer is None:
        from align_jax.models import load_encoder

        encoder, tokenizer = load_encoder()
    texts = [prompt_to_text(p) for p in prompts]
    key = combine_digest({"pooling": POOLING, "max_length": int(max_length),
                    "encoder": params_fingerprint(nnx.state(encoder, nnx.Param)),
                    "encoder_cfg": repr(encoder.config),
                    "tokenizer": tokenizer_fingerprint(tokenizer), "texts": texts})
    return cached_arrays(
        "emb", key,
        lambda: {"emb": embed_texts(texts, encoder, tokenizer, batch_size=batch_size,
                                    max_length=max_length)},
        cache_dir=cache_dir, use_cache=use_cache, num_examples=len(texts),
        meta={"pooling": POOLING, "num_examples": len(texts)})
