"""One-token decode step over per-layer weights and per-layer KV buffers (the sampler's CPU path).

Why a second forward next to `Decoder.hidden_states`: the training forward scans over STACKED
[L, ...] weights and one stacked cache. Inside a decode `while_loop` on XLA:CPU, each scan step's
dynamic slice of the stacked weights is a materialised copy (the whole model is copied once per
generated token), and the stacked cache's [B, S, K, E] layer slice is transposed for both
attention contractions. Here, once per decode call (outside the token loop):

- LoRA adapters are merged into the base weights, q/k/v and gate/up are concatenated (fewer,
  wider GEMMs), and the weights are split per layer: one extra copy of the layer weights is held
  while decoding;
- the output projection is held as [D, <= 8192] column blocks (faster XLA:CPU GEMMs);
- the cache is split per layer with K stored [B, K, E, S] and V [B, K, S, E], so scores
  (q·K) and outputs (p·V) are plain batched GEMMs with no per-token transpose.

The layer loop is unrolled, so compile time grows with depth (SmolLM2's 30 layers: seconds).
Same math as `hidden_states` with a cache (RoPE position = number of valid slots, finished rows
write an invalid slot, sliding windows by RoPE position); the sampler tests check both paths
against HF transformers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from align_jax.models.llama import KVCache, _norm_shapes, _proj_shapes
from align_jax.models.ops import (NEG, activation, apply_rope, embed_tokens, rms_norm,
                                  rope_tables, softcap, windowed)
from align_jax.sharding import constrain

K_AXES = ("batch", "kv_heads", "head_dim", "length")  # per-layer K buffer [B, K, E, S]
V_AXES = ("batch", "kv_heads", "length", "head_dim")  # per-layer V buffer [B, K, S, E]
HEAD_BLOCK = 8192  # vocabulary columns per output-projection block (see decode_weights)


@struct.dataclass
class LayerCache:
    """Per-layer K [B, K, E, S] / V [B, K, S, E] buffers plus the slot bookkeeping shared by all
    layers (same meaning as :class:`KVCache`'s)."""

    k_bkes: tuple[jax.Array, ...]
    v_bkse: tuple[jax.Array, ...]
    valid_bs: jax.Array
    pos_bs: jax.Array
    index: jax.Array

    @classmethod
    def from_stacked(cls, cache: KVCache) -> "LayerCache":
        L = cache.k_lbske.shape[0]
        k = tuple(constrain(jnp.transpose(cache.k_lbske[l], (0, 2, 3, 1)), K_AXES) for l in range(L))
        v = tuple(constrain(jnp.transpose(cache.v_lbske[l], (0, 2, 1, 3)), V_AXES) for l in range(L))
        return cls(k_bkes=k, v_bkse=v, valid_bs=cache.valid_bs, pos_bs=cache.pos_bs,
                   index=cache.index)

    def constrained(self) -> "LayerCache":
        row = lambda x: constrain(x, ("batch", "length"))
        return self.replace(k_bkes=tuple(constrain(k, K_AXES) for k in self.k_bkes),
                            v_bkse=tuple(constrain(v, V_AXES) for v in self.v_bkse),
                            valid_bs=row(self.valid_bs), pos_bs=row(self.pos_bs))


def decode_weights(model) -> dict:
    """{"layers": per-layer dicts of LoRA-merged, fused weights in the compute dtype (wqkv
    [D, (H+2K)E], wo, wgu [D, 2F], w_down, the layer's norms, biases where configured),
    "head": the output projection as [D, V] column blocks of <= HEAD_BLOCK tokens}.

    The head is split because XLA:CPU's GEMM at M = batch rows streams a [D, <=8k] block at
    ~9-11 GB/s but a whole [D, V] vocabulary at ~5 (B=16: SmolLM2's head 13 ms instead of 22,
    llama-25M's 4 ms instead of 12 for the tied [V, D] embedding as is); the blocks are copied
    once per decode call, the logits concatenated per token."""
    cfg = model.cfg
    arrs = model.layers.arrays()
    dt = jnp.dtype(cfg.dtype)
    shapes = _proj_shapes(cfg)

    # Everything is sliced per layer BEFORE merging/concatenating, so each layer's fused
    # weight is one slice+add+concat fusion (one copy); concatenating the stacked arrays first
    # and slicing after copied every weight twice (SmolLM2: prep 270 -> 190 ms per call).
    def merged(name, l):
        w = arrs[name][l]
        if "lora_a_" + name in arrs:
            w = w + (arrs["lora_a_" + name][l] @ arrs["lora_b_" + name][l]) * cfg.lora_scale
        return w.astype(dt)

    def bias(names, l):
        bs = [arrs.get("b" + n[1:]) for n in names]
        if all(b is None for b in bs):
            return None
        return jnp.concatenate([jnp.zeros((shapes[n][1],), dt) if b is None else b[l].astype(dt)
                                for b, n in zip(bs, names)])

    def layer(l):
        w = {n: arrs[n][l] for n in _norm_shapes(cfg)}
        w |= {
            "wqkv": jnp.concatenate([merged(n, l) for n in ("wq", "wk", "wv")], axis=-1),
            "bqkv": bias(("wq", "wk", "wv"), l),
            "wo": merged("wo", l), "bo": bias(("wo",), l),
            "wgu": jnp.concatenate([merged("w_gate", l), merged("w_up", l)], axis=-1),
            "bgu": bias(("w_gate", "w_up"), l),
            "w_down": merged("w_down", l), "b_down": bias(("w_down",), l),
        }
        return {k: v for k, v in w.items() if v is not None}

    head_dv = (model.embed[...].T if cfg.tie_word_embeddings else model.lm_head[...]).astype(dt)
    V = head_dv.shape[1]
    n = -(-V // HEAD_BLOCK)
    cuts = [V * i // n for i in range(n + 1)]
    head = tuple(constrain(head_dv[:, a:b], ("embed", "vocab")) for a, b in zip(cuts, cuts[1:]))
    return {"layers": [layer(l) for l in range(cfg.num_layers)], "head": head}


def _linear(x, w, b=None):
    y = x @ w
    return y if b is None else y + b


def decode_step(model, weights, cache: LayerCache, tokens_b, live_b):
    """Feed one token per row. `live_b` False writes an invalid (masked) slot, as finished rows
    do in the sampler. `weights` from :func:`decode_weights`. Returns (float32 next-token
    logits [B, V], updated cache)."""
    cfg = model.cfg
    B = tokens_b.shape[0]
    H, K, E = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G, dt = H // K, jnp.dtype(cfg.dtype)
    eps, off = cfg.rms_norm_eps, cfg.norm_offset
    idx, S = cache.index, cache.valid_bs.shape[1]
    z = jnp.zeros((), jnp.int32)
    pos_b = jnp.sum(cache.valid_bs, axis=1, dtype=jnp.int32)
    valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, live_b[:, None], (z, idx))
    pos_bs = jax.lax.dynamic_update_slice(cache.pos_bs, pos_b[:, None], (z, idx))
    allowed_bs = valid_bs & (jnp.arange(S)[None, :] <= idx)
    # the layer loop is unrolled: each layer's window / RoPE table is a static choice here
    masks = {False: allowed_bs, True: windowed(allowed_bs, pos_b[:, None] - pos_bs,
                                               cfg.sliding_window or 0)}
    ropes = rope_tables(cfg, pos_b[:, None])  # [B, 1, R] each

    x = embed_tokens(cfg, model.embed[...], tokens_b)
    ks, vs = [], []
    for w, kc, vc, local in zip(weights["layers"], cache.k_bkes, cache.v_bkse, cfg.local_layers):
        cos, sin = ropes[local]
        h = rms_norm(x, w["attn_norm"], eps, off)
        qkv = _linear(h, w["wqkv"], w.get("bqkv"))
        q, k, v = jnp.split(qkv, [H * E, (H + K) * E], axis=-1)
        q, k = q.reshape(B, 1, H, E), k.reshape(B, 1, K, E)
        if cfg.qk_norm:
            q, k = rms_norm(q, w["q_norm"], eps, off), rms_norm(k, w["k_norm"], eps, off)
        q = apply_rope(q, cos, sin).reshape(B, K, G, E)
        k = apply_rope(k, cos, sin).reshape(B, K, E, 1)
        kc = jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), (z, z, z, idx))
        vc = jax.lax.dynamic_update_slice(vc, v.reshape(B, K, 1, E).astype(vc.dtype),
                                          (z, z, idx, z))
        kc, vc = constrain(kc, K_AXES), constrain(vc, V_AXES)
        s = jnp.einsum("bkge,bkes->bkgs", q, kc.astype(dt), preferred_element_type=jnp.float32)
        s = softcap(s * cfg.attn_scale, cfg.attn_logit_softcapping)
        s = jnp.where(masks[local][:, None, None, :], s, NEG)
        p = jax.nn.softmax(s, axis=-1).astype(dt)
        a = jnp.einsum("bkgs,bkse->bkge", p, vc.astype(dt)).reshape(B, H * E)
        o = _linear(a, w["wo"], w.get("bo"))
        if cfg.sandwich_norms:
            o = rms_norm(o, w["attn_post_norm"], eps, off)
        x = constrain(x + o, ("batch", "embed"))
        h = rms_norm(x, w["mlp_norm"], eps, off)
        g, u = jnp.split(_linear(h, w["wgu"], w.get("bgu")), 2, axis=-1)
        m = constrain(activation(cfg, g) * u, ("batch", "mlp"))
        m = _linear(m, w["w_down"], w.get("b_down"))
        if cfg.sandwich_norms:
            m = rms_norm(m, w["mlp_post_norm"], eps, off)
        x = constrain(x + m, ("batch", "embed"))
        ks.append(kc)
        vs.append(vc)
    x = rms_norm(x, model.final_norm[...], eps, off)
    logits = jnp.concatenate([jnp.dot(x, w, preferred_element_type=jnp.float32)
                              for w in weights["head"]], axis=-1)
    logits = softcap(logits, cfg.final_logit_softcapping)
    new = LayerCache(k_bkes=tuple(ks), v_bkse=tuple(vs), valid_bs=valid_bs, pos_bs=pos_bs,
                     index=idx + 1)
    return constrain(logits, ("batch", "vocab")), new
