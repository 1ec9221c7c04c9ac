"""Numerics shared by the training forward (`llama.Decoder`) and the per-layer decode step
(`decode.decode_step`): RoPE tables, RMSNorm, activations, soft-capping, attention masks.

Both paths call these, so a family switch (Gemma's (1 + w) norms, LongRoPE, partial rotary,
soft-caps) is implemented once. Formulas follow transformers' (the oracle), noted per function.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.models.config import DecoderConfig, longrope_attention_factor

NEG = -1e30  # finite, so fully-masked (padding) query rows give a uniform, NaN-free softmax
FAR = 1 << 30  # window of a layer without one (beyond any position)


# ---- RoPE -----------------------------------------------------------------------------------
def rope_inv_freq(cfg: DecoderConfig, local: bool = False, long: bool = False) -> np.ndarray:
    """[rotary_dim / 2] float32 inverse frequencies of global (or, for Gemma 3, local) layers;
    for LongRoPE the short set, or the long one with `long=True`."""
    r = cfg.rotary_dim
    own_local = local and cfg.rope_local_theta is not None
    theta = cfg.rope_local_theta if own_local else cfg.rope_theta
    inv = (1.0 / theta ** (np.arange(0, r, 2, dtype=np.float32) / r)).astype(np.float32)
    if own_local:
        return inv  # Gemma 3's sliding layers use plain RoPE; scaling applies to global ones
    if cfg.longrope is not None:  # transformers: 1 / (ext_factor * theta ** (2i / r))
        ext = np.asarray(cfg.longrope[1 if long else 0], np.float32)
        return (1.0 / (ext * theta ** (np.arange(0, r, 2, dtype=np.float32) / r))).astype(np.float32)
    if cfg.rope_scaling is None:
        return inv
    rtype, factor, lo, hi, orig = cfg.rope_scaling
    if rtype == "linear":
        return (inv / factor).astype(np.float32)
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    low_wl, high_wl = orig / lo, orig / hi
    wl = 2 * math.pi / inv
    scaled = np.where(wl > low_wl, inv / factor, inv)
    smooth = (orig / wl - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wl >= high_wl) & (wl <= low_wl)
    return np.where(medium, blended, scaled).astype(np.float32)


def rope_cos_sin(cfg: DecoderConfig, pos_bt: jax.Array, local: bool = False):
    """cos, sin [B, T, rotary_dim] float32 for RoPE positions `pos_bt`.

    LongRoPE (Phi-3) switches to the long factors when the sequence passes
    original_max_position_embeddings. transformers decides once per forward call for the whole
    batch (longest row); here each row decides from its own positions in this call (max + 1),
    so a row's logits do not depend on its batch-mates. Equal whenever all rows are on the same
    side (always for one row). With a KV cache, keys keep the rotation they were computed with
    (as vLLM does); transformers' Phi-3 `generate` instead recomputes its whole cache with the
    long factors at the step the sequence first passes the limit, so tokens sampled after that
    step can differ from transformers' (only in sequences that cross it)."""
    ang_bt1 = pos_bt.astype(jnp.float32)[..., None]
    scale = 1.0
    if cfg.longrope is not None and not (local and cfg.rope_local_theta is not None):
        use_long = (jnp.max(pos_bt, axis=1) + 1 > cfg.longrope[2])[:, None, None]
        inv = jnp.where(use_long, rope_inv_freq(cfg, long=True), rope_inv_freq(cfg))
        ang = ang_bt1 * inv
        scale = longrope_attention_factor(cfg)
    else:
        ang = ang_bt1 * jnp.asarray(rope_inv_freq(cfg, local))
    ang = jnp.concatenate([ang, ang], axis=-1)
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    return (cos, sin) if scale == 1.0 else (cos * scale, sin * scale)


def rope_tables(cfg: DecoderConfig, pos_bt: jax.Array):
    """{False: global (cos, sin), True: local (cos, sin)}; one shared entry unless Gemma 3's
    sliding layers have their own base."""
    g = rope_cos_sin(cfg, pos_bt)
    return {False: g, True: rope_cos_sin(cfg, pos_bt, local=True)
            if cfg.rope_local_theta is not None else g}


def apply_rope(x_bthe, cos_btr, sin_btr):
    """Rotate-half RoPE on the first r = cos.shape[-1] dims (all of them unless partial)."""
    r = cos_btr.shape[-1]
    if r < x_bthe.shape[-1]:
        rot = apply_rope(x_bthe[..., :r], cos_btr, sin_btr)
        return jnp.concatenate([rot, x_bthe[..., r:]], axis=-1)
    half = r // 2
    rot = jnp.concatenate([-x_bthe[..., half:], x_bthe[..., :half]], axis=-1)
    xf = x_bthe.astype(jnp.float32)
    out = xf * cos_btr[:, :, None] + rot.astype(jnp.float32) * sin_btr[:, :, None]
    return out.astype(x_bthe.dtype)


# ---- elementwise ----------------------------------------------------------------------------
def rms_norm(x, w, eps, offset: float = 0.0):
    """RMSNorm in float32; scale w (llama) or (offset + w) (Gemma, offset 1)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    w = w.astype(jnp.float32)
    return ((w + offset if offset else w) * xf).astype(x.dtype)


def gelu_exact(x):
    """½·x·(1 + erf(x/√2)): torch's / transformers' "gelu" formula. jax.nn.gelu's exact form
    goes through erfc, which XLA:CPU expands into a long exp-based polynomial (a 13 kB kernel
    against 2 kB): 2.8x slower on a [16, 64, 1536] block. Values agree with it to <= 1e-6."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / math.sqrt(2.0))).astype(x.dtype))


def activation(cfg: DecoderConfig, x):
    if cfg.hidden_act == "silu":
        return jax.nn.silu(x)
    if cfg.hidden_act == "gelu_pytorch_tanh":
        return jax.nn.gelu(x, approximate=True)
    return gelu_exact(x)


def softcap(x, cap: float | None):
    """cap * tanh(x / cap) (Gemma 2's attention and final-logit capping); identity for None."""
    return x if not cap else jnp.tanh(x / cap) * cap


def embed_tokens(cfg: DecoderConfig, embed_vd, ids):
    x = jnp.take(embed_vd, ids, axis=0)
    if cfg.embed_scale:  # transformers rounds sqrt(d) to the weights' dtype, then multiplies
        x = x * jnp.asarray(math.sqrt(cfg.hidden_size), embed_vd.dtype)
    return x.astype(cfg.dtype)


# ---- masks ----------------------------------------------------------------------------------
def layer_windows(cfg: DecoderConfig) -> np.ndarray:
    """[L] int32 per-layer sliding window (FAR = global layer): scanned with the weights."""
    return np.asarray([cfg.sliding_window if loc else FAR for loc in cfg.local_layers], np.int32)


def windowed(allowed, dist, window):
    """`allowed` restricted to keys fewer than `window` RoPE positions back (transformers:
    key > query - window). `window` may be a traced per-layer scalar."""
    return allowed & (dist < window)
