"""Flax NNX Llama-family causal LM (Llama 2/3, Mistral, Qwen2, SmolLM2).

Layers are STACKED: every per-layer weight has a leading `layers` axis and the forward pass is a
`lax.scan` over them, so compile time does not grow with depth. The KV cache is one preallocated
buffer per K/V of shape [L, B, S, Hkv, hd] threaded through the scan carry and updated with
`dynamic_update_slice`, so a jitted decode loop with donated buffers updates it in place.

Shape suffixes: b=batch, t=query length, s=key/cache length, d=hidden, h=heads, k=kv heads,
g=query heads per kv head, e=head_dim, v=vocab, l=layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from align_jax.models.config import DecoderConfig
from align_jax.sharding import constrain

_NEG = -1e30  # finite, so fully-masked (padding) query rows give a uniform, NaN-free softmax


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


# ---- RoPE -----------------------------------------------------------------------------------
def rope_inv_freq(cfg: DecoderConfig) -> jax.Array:
    e = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
    if cfg.rope_scaling is None:
        return inv
    rtype, factor, lo, hi, orig = cfg.rope_scaling
    if rtype == "linear":
        return inv / factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    low_wl, high_wl = orig / lo, orig / hi
    wl = 2 * math.pi / inv
    scaled = jnp.where(wl > low_wl, inv / factor, inv)
    smooth = (orig / wl - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wl >= high_wl) & (wl <= low_wl)
    return jnp.where(medium, blended, scaled)


def rope_cos_sin(cfg: DecoderConfig, pos_bt: jax.Array):
    inv = rope_inv_freq(cfg)
    ang = pos_bt.astype(jnp.float32)[..., None] * inv  # [b,t,e/2]
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x_bthe, cos_bte, sin_bte):
    half = x_bthe.shape[-1] // 2
    rot = jnp.concatenate([-x_bthe[..., half:], x_bthe[..., :half]], axis=-1)
    xf = x_bthe.astype(jnp.float32)
    out = xf * cos_bte[:, :, None] + rot.astype(jnp.float32) * sin_bte[:, :, None]
    return out.astype(x_bthe.dtype)


def rms_norm(x, w, eps):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (w.astype(jnp.float32) * xf).astype(x.dtype)


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


class DecoderLayers(nnx.Module):
    """All transformer blocks' weights, stacked on a leading `layers` axis."""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        L, pd = cfg.num_layers, jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.attn_norm = nnx.Param(jnp.ones((L, cfg.hidden_size), pd), axes=("layers", "norm"))
        self.mlp_norm = nnx.Param(jnp.ones((L, cfg.hidden_size), pd), axes=("layers", "norm"))
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
        self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), pd), axes=("norm",))
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
        return constrain(logits, ("batch", "length", "vocab"))

    def hidden_states(self, input_ids, attention_mask=None, *, positions=None, cache=None):
        """Final-norm hidden states [B,T,D] (and the updated cache, or None). The sampler's
        CPU decode path is `align_jax.models.decode` (per-layer weights and buffers)."""
        cfg = self.cfg
        B, T = input_ids.shape
        mask_bt = (jnp.ones((B, T), bool) if attention_mask is None
                   else attention_mask.astype(bool))
        if positions is None:
            base = 0 if cache is None else jnp.sum(cache.valid_bs, axis=1, dtype=jnp.int32)[:, None]
            positions = base + jnp.maximum(jnp.cumsum(mask_bt, axis=1, dtype=jnp.int32) - 1, 0)
        positions = positions.astype(jnp.int32)

        if cache is None:
            key_valid, key_pos, q_slot = mask_bt, positions, jnp.arange(T)
            k_slot = jnp.arange(T)
        else:
            idx = cache.index
            key_valid = jax.lax.dynamic_update_slice(cache.valid_bs, mask_bt, (0, idx))
            key_pos = jax.lax.dynamic_update_slice(cache.pos_bs, positions, (0, idx))
            q_slot, k_slot = idx + jnp.arange(T), jnp.arange(cache.max_len)
        allowed = key_valid[:, None, :] & (k_slot[None, None, :] <= q_slot[None, :, None])
        if cfg.sliding_window:
            allowed &= (positions[:, :, None] - key_pos[:, None, :]) < cfg.sliding_window

        x = jnp.take(self.embed[...], input_ids, axis=0).astype(cfg.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        cos, sin = rope_cos_sin(cfg, positions)
        params = self.layers.arrays()

        def body(carry, xs):
            x, ck, cv = carry
            lp, l = xs
            x, ck, cv = _block(cfg, x, lp, l, ck, cv, allowed, cos, sin,
                               None if cache is None else cache.index)
            return (x, ck, cv), None

        if cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        ck, cv = (None, None) if cache is None else (cache.k_lbske, cache.v_lbske)
        (x, ck, cv), _ = jax.lax.scan(body, (x, ck, cv), (params, jnp.arange(cfg.num_layers)))
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
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


def _block(cfg: DecoderConfig, x, lp, layer, ck, cv, allowed_bts, cos, sin, cache_index):
    B, T, _ = x.shape
    H, K, E = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = H // K
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    q = apply_rope(_proj(cfg, lp, "wq", h).reshape(B, T, H, E), cos, sin)
    k = apply_rope(_proj(cfg, lp, "wk", h).reshape(B, T, K, E), cos, sin)
    v = _proj(cfg, lp, "wv", h).reshape(B, T, K, E)
    if cache_index is not None:
        z = jnp.zeros((), jnp.int32)
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer, z, cache_index, z, z))
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer, z, cache_index, z, z))
        k = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False).astype(cfg.dtype)
        v = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False).astype(cfg.dtype)
    q = constrain(q.reshape(B, T, K, G, E), ("batch", "length", "kv_heads", None, "head_dim"))
    scores = jnp.einsum("btkge,bske->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(E)
    scores = jnp.where(allowed_bts[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    attn = jnp.einsum("bkgts,bske->btkge", probs, v).reshape(B, T, H * E)
    x = x + _proj(cfg, lp, "wo", attn)
    x = constrain(x, ("batch", "length", "embed"))
    h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
    m = jax.nn.silu(_proj(cfg, lp, "w_gate", h)) * _proj(cfg, lp, "w_up", h)
    m = constrain(m, ("batch", "length", "mlp"))
    x = x + _proj(cfg, lp, "w_down", m)
    return constrain(x, ("batch", "length", "embed")), ck, cv
