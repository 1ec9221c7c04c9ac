"""Flax NNX decoder-only causal LM: the Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) and
the families that are the same block with switches (Qwen3, Gemma 2, Gemma 3 text, Phi-3; see
`config.DecoderConfig` and `ops`).

Layers are STACKED: every per-layer weight has a leading `layers` axis and the forward pass is a
`lax.scan` over them, so compile time does not grow with depth. The KV cache is one preallocated
buffer per K/V of shape [L, B, S, Hkv, hd] threaded through the scan carry and updated with
`dynamic_update_slice`, so a jitted decode loop with donated buffers updates it in place.

Per-layer differences (Gemma's alternating sliding-window / global layers, Gemma 3's local RoPE
base) are DATA: a per-layer window array is scanned with the weights and selects the mask (and
RoPE table) inside the one scan body, so no family needs Python branching per layer.

Shape suffixes: b=batch, t=query length, s=key/cache length, d=hidden, h=heads, k=kv heads,
g=query heads per kv head, e=head_dim, v=vocab, l=layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from align_jax.models.config import DecoderConfig
from align_jax.models.ops import (FAR, NEG, activation, apply_rope, embed_tokens, layer_windows,
                                  rms_norm, rope_tables, softcap, windowed)
from align_jax.sharding import constrain


class LoRAParam(nnx.Param):
    """Adapter weights; a distinct Variable type so optimizers/filters can select them alone."""


@struct.dataclass
class KVCache:
    """Preallocated attention cache. Slots [0, index) are filled; `valid` marks real tokens
    (left padding is invalid); `pos` holds each slot's RoPE position (for sliding windows)."""

    k_lbske: jax.Array
    v_lbske: jax.Array
    valid_bs: jax.Array
    pos_bs: jax.Array
    index: jax.Array  # [] int32, next slot to write

    @classmethod
    def init(cls, cfg: DecoderConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(
            k_lbske=jnp.zeros(shape, dtype),
            v_lbske=jnp.zeros(shape, dtype),
            valid_bs=jnp.zeros((batch, max_len), bool),
            pos_bs=jnp.zeros((batch, max_len), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k_lbske.shape[2]

    def constrained(self) -> "KVCache":
        row = lambda x: constrain(x, ("batch", "length"))
        return self.replace(k_lbske=constrain(self.k_lbske, CACHE_AXES),
                            v_lbske=constrain(self.v_lbske, CACHE_AXES),
                            valid_bs=row(self.valid_bs), pos_bs=row(self.pos_bs))


CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


@struct.dataclass
class PrefixKV:
    """Every layer's keys / values of a batch of prefixes (``hidden_states(...,
    return_kv=True)``), gathered onto the rows that continue them (``hidden_states(...,
    prefix=)``, see ``models.shared_prefix``). Scanned per layer with the weights, not carried:
    no whole-stack buffer is copied or updated per layer."""

    k_lbske: jax.Array
    v_lbske: jax.Array
    valid_bs: jax.Array  # real prefix tokens
    pos_bs: jax.Array  # their RoPE positions

    def rows(self, idx) -> "PrefixKV":
        return PrefixKV(k_lbske=jnp.take(self.k_lbske, idx, axis=1),
                        v_lbske=jnp.take(self.v_lbske, idx, axis=1),
                        valid_bs=jnp.take(self.valid_bs, idx, axis=0),
                        pos_bs=jnp.take(self.pos_bs, idx, axis=0))


# ---- parameters -----------------------------------------------------------------------------
def _proj_shapes(cfg: DecoderConfig):
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    # name -> (in, out, in_axis, out_axis, has_bias)
    return {
        "wq": (d, q, "embed", "heads", cfg.qkv_bias),
        "wk": (d, kv, "embed", "kv_heads", cfg.qkv_bias),
        "wv": (d, kv, "embed", "kv_heads", cfg.qkv_bias),
        "wo": (q, d, "heads", "embed", cfg.o_bias),
        "w_gate": (d, f, "embed", "mlp", cfg.mlp_bias),
        "w_up": (d, f, "embed", "mlp", cfg.mlp_bias),
        "w_down": (f, d, "mlp", "embed", cfg.mlp_bias),
    }


def _norm_shapes(cfg: DecoderConfig) -> dict[str, int]:
    """Per-layer norm weights: pre-norms always, Gemma's post-norms, Qwen3/Gemma 3's q/k norms
    (one weight over head_dim, shared by all heads)."""
    d = cfg.hidden_size
    out = {"attn_norm": d, "mlp_norm": d}
    if cfg.sandwich_norms:
        out.update(attn_post_norm=d, mlp_post_norm=d)
    if cfg.qk_norm:
        out.update(q_norm=cfg.head_dim, k_norm=cfg.head_dim)
    return out


class DecoderLayers(nnx.Module):
    """All transformer blocks' weights, stacked on a leading `layers` axis."""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        L, pd = cfg.num_layers, jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        for name, size in _norm_shapes(cfg).items():  # identity at init: w = 1, or (1 + w) = 1
            setattr(self, name, nnx.Param(jnp.full((L, size), 1.0 - cfg.norm_offset, pd),
                                          axes=("layers", "norm")))
        for name, (i, o, ia, oa, bias) in _proj_shapes(cfg).items():
            setattr(self, name, nnx.Param(init(rngs.params(), (L, i, o), pd), axes=("layers", ia, oa)))
            if bias:
                setattr(self, "b" + name[1:], nnx.Param(jnp.zeros((L, o), pd), axes=("layers", oa)))
            if cfg.lora_rank and name in cfg.lora_targets:
                r = cfg.lora_rank
                # B starts at zero so the adapted model equals the base model at step 0.
                a = nnx.initializers.normal(1.0 / math.sqrt(i))(rngs.params(), (L, i, r), pd)
                setattr(self, "lora_a_" + name, LoRAParam(a, axes=("layers", ia, "lora_rank")))
                setattr(self, "lora_b_" + name,
                        LoRAParam(jnp.zeros((L, r, o), pd), axes=("layers", "lora_rank", oa)))

    def arrays(self) -> dict[str, jax.Array]:
        return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Variable)}


class Decoder(nnx.Module):
    """Causal LM. `model(ids, attention_mask)` -> float32 logits [B, T, V];
    with `cache=` it returns `(logits, new_cache)`."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Param(init(rngs.params(), (cfg.vocab_size, cfg.hidden_size), pd),
                               axes=("vocab", "embed"))
        self.layers = DecoderLayers(cfg, rngs)
        self.final_norm = nnx.Param(jnp.full((cfg.hidden_size,), 1.0 - cfg.norm_offset, pd),
                                    axes=("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(init(rngs.params(), (cfg.hidden_size, cfg.vocab_size), pd),
                                     axes=("embed", "vocab"))

    # -- public API --------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, *, positions=None, cache=None):
        h, new_cache = self.hidden_states(input_ids, attention_mask, positions=positions, cache=cache)
        logits = self.logits_from_hidden(h)
        return logits if cache is None else (logits, new_cache)

    def logits_from_hidden(self, h_btd):
        w = self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
        w = w.astype(self.cfg.dtype)
        logits = jnp.einsum("btd,dv->btv", h_btd, w, preferred_element_type=jnp.float32)
        logits = softcap(logits, self.cfg.final_logit_softcapping)
        return constrain(logits, ("batch", "length", "vocab"))

    def hidden_states(self, input_ids, attention_mask=None, *, positions=None, cache=None,
                      inputs_embeds=None, prefix: PrefixKV | None = None,
                      return_kv: bool = False):
        """Final-norm hidden states [B,T,D] (and the updated cache, or None). The sampler's
        CPU decode path is `align_jax.models.decode` (per-layer weights and buffers).
        ``inputs_embeds`` [B,T,D] replaces the token embeddings (``input_ids`` then only gives
        the shape), e.g. learned prefix vectors (the LD-Align guide decoder).
        ``return_kv``: return ``(h, PrefixKV)`` of these rows instead; ``prefix``: the rows
        continue those prefixes (attend to them, positions after them)."""
        cfg = self.cfg
        B, T = input_ids.shape
        mask_bt = (jnp.ones((B, T), bool) if attention_mask is None
                   else attention_mask.astype(bool))
        past = cache if cache is not None else prefix
        if positions is None:
            base = 0 if past is None else jnp.sum(past.valid_bs, axis=1, dtype=jnp.int32)[:, None]
            positions = base + jnp.maximum(jnp.cumsum(mask_bt, axis=1, dtype=jnp.int32) - 1, 0)
        positions = positions.astype(jnp.int32)

        if cache is None and prefix is None:
            key_valid, key_pos, q_slot = mask_bt, positions, jnp.arange(T)
            k_slot = jnp.arange(T)
        elif prefix is not None:
            Lp = prefix.valid_bs.shape[1]
            key_valid = jnp.concatenate([prefix.valid_bs, mask_bt], axis=1)
            key_pos = jnp.concatenate([prefix.pos_bs, positions], axis=1)
            q_slot, k_slot = Lp + jnp.arange(T), jnp.arange(Lp + T)
        else:
            idx = cache.index
            key_valid = jax.lax.dynamic_update_slice(cache.valid_bs, mask_bt, (0, idx))
            key_pos = jax.lax.dynamic_update_slice(cache.pos_bs, positions, (0, idx))
            q_slot, k_slot = idx + jnp.arange(T), jnp.arange(cache.max_len)
        allowed = key_valid[:, None, :] & (k_slot[None, None, :] <= q_slot[None, :, None])
        dist = positions[:, :, None] - key_pos[:, None, :]  # RoPE distance query -> key
        windows = layer_windows(cfg)
        mixed = bool((windows != windows[0]).any())  # else one mask serves every layer
        if not mixed and windows[0] < FAR:
            allowed = windowed(allowed, dist, int(windows[0]))

        x = (embed_tokens(cfg, self.embed[...], input_ids) if inputs_embeds is None
             else inputs_embeds.astype(cfg.dtype))
        x = constrain(x, ("batch", "length", "embed"))
        ropes = rope_tables(cfg, positions)
        params = self.layers.arrays()

        def body(carry, xs):
            x, ck, cv = carry
            lp, l, window, past_kv = xs
            mask, (cos, sin) = allowed, ropes[False]
            if mixed:  # per-layer flags from the scanned window array, no Python branching
                mask = windowed(allowed, dist, window)
                if ropes[True] is not ropes[False]:
                    cos = jnp.where(window < FAR, ropes[True][0], cos)
                    sin = jnp.where(window < FAR, ropes[True][1], sin)
            x, ck, cv, kv = _block(cfg, x, lp, l, ck, cv, mask, cos, sin,
                                   None if cache is None else cache.index, past_kv)
            return (x, ck, cv), (kv if return_kv else None)

        if cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        ck, cv = (None, None) if cache is None else (cache.k_lbske, cache.v_lbske)
        past_kv = None if prefix is None else (prefix.k_lbske, prefix.v_lbske)
        xs = (params, jnp.arange(cfg.num_layers), jnp.asarray(windows), past_kv)
        (x, ck, cv), kv = jax.lax.scan(body, (x, ck, cv), xs)
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps, cfg.norm_offset)
        if return_kv:
            return x, PrefixKV(k_lbske=kv[0], v_lbske=kv[1], valid_bs=mask_bt, pos_bs=positions)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(
                k_lbske=constrain(ck, CACHE_AXES), v_lbske=constrain(cv, CACHE_AXES),
                valid_bs=key_valid, pos_bs=key_pos, index=cache.index + T,
            )
        return x, new_cache


def _proj(cfg: DecoderConfig, lp: dict, name: str, x):
    w = lp[name].astype(cfg.dtype)
    y = jnp.einsum("btd,df->btf", x, w)
    bname = "b" + name[1:]
    if bname in lp:
        y = y + lp[bname].astype(cfg.dtype)
    if "lora_a_" + name in lp:
        a = lp["lora_a_" + name].astype(cfg.dtype)
        b = lp["lora_b_" + name].astype(cfg.dtype)
        y = y + jnp.einsum("btr,rf->btf", jnp.einsum("btd,dr->btr", x, a), b) * cfg.lora_scale
    return y


def _block(cfg: DecoderConfig, x, lp, layer, ck, cv, allowed_bts, cos, sin, cache_index,
           past_kv=None):
    """One layer -> (x, ck, cv, (k, v) of these rows). ``past_kv`` [B, Lp, K, E] each: keys and
    values of the rows' prefixes, attended before the rows' own."""
    B, T, _ = x.shape
    H, K, E = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = H // K
    eps, off = cfg.rms_norm_eps, cfg.norm_offset
    h = rms_norm(x, lp["attn_norm"], eps, off)
    q = _proj(cfg, lp, "wq", h).reshape(B, T, H, E)
    k = _proj(cfg, lp, "wk", h).reshape(B, T, K, E)
    if cfg.qk_norm:
        q, k = rms_norm(q, lp["q_norm"], eps, off), rms_norm(k, lp["k_norm"], eps, off)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    v = _proj(cfg, lp, "wv", h).reshape(B, T, K, E)
    own_kv = (k, v)
    if past_kv is not None:
        k = jnp.concatenate([past_kv[0].astype(k.dtype), k], axis=1)
        v = jnp.concatenate([past_kv[1].astype(v.dtype), v], axis=1)
    if cache_index is not None:
        z = jnp.zeros((), jnp.int32)
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer, z, cache_index, z, z))
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer, z, cache_index, z, z))
        k = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False).astype(cfg.dtype)
        v = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False).astype(cfg.dtype)
    q = constrain(q.reshape(B, T, K, G, E), ("batch", "length", "kv_heads", None, "head_dim"))
    scores = jnp.einsum("btkge,bske->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = softcap(scores * cfg.attn_scale, cfg.attn_logit_softcapping)
    scores = jnp.where(allowed_bts[:, None, None], scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    attn = jnp.einsum("bkgts,bske->btkge", probs, v).reshape(B, T, H * E)
    o = _proj(cfg, lp, "wo", attn)
    if cfg.sandwich_norms:
        o = rms_norm(o, lp["attn_post_norm"], eps, off)
    x = constrain(x + o, ("batch", "length", "embed"))
    h = rms_norm(x, lp["mlp_norm"], eps, off)
    m = activation(cfg, _proj(cfg, lp, "w_gate", h)) * _proj(cfg, lp, "w_up", h)
    m = _proj(cfg, lp, "w_down", constrain(m, ("batch", "length", "mlp")))
    if cfg.sandwich_norms:
        m = rms_norm(m, lp["mlp_post_norm"], eps, off)
    return constrain(x + m, ("batch", "length", "embed")), ck, cv, own_kv
