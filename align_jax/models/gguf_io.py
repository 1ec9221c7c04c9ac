"""GGUF (llama.cpp) checkpoint -> our Decoder + a HF tokenizer.

Reading goes through the `gguf` package (`GGUFReader`, `gguf.quants.dequantize`): every tensor
is dequantised to float32 once at load time (we train/sample in float, not in Q4). Tensors are
first renamed to HF's names in torch's [out, in] layout, so the one name/layout map in
`hf_io.hf_to_params` stays the only place that knows our stacked layout.

Two llama.cpp conventions must be undone here:
* dims are stored fastest-first (`t.shape` = [in, out]); numpy's view of the data is already
  [out, in] = torch layout, which we check against the reversed GGUF shape;
* `convert_hf_to_gguf.py` permutes the rows of q/k (weights and biases) of the `llama`
  architecture from HF's rotate-half RoPE layout to GPT-J's interleaved pairs; we invert that
  permutation exactly (`unpermute_qk`). Other architectures (qwen2) are stored unpermuted.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from align_jax.models.config import DecoderConfig

log = logging.getLogger(__name__)

SUPPORTED_ARCHS = ("llama", "qwen2")

# GGUF per-block tensor stem -> HF per-layer module (suffix .weight/.bias is kept).
_BLOCK_MAP = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


# ---- reading -------------------------------------------------------------------------------
class _Reader(gguf.GGUFReader):
    """`gguf.GGUFReader`, with its byte buffer held as a plain ndarray view of the memmap.

    The parser slices the buffer once per metadata element (~10^6 slices for a 50k-token
    vocabulary); slices of an `np.memmap` subclass pay `__array_finalize__` each time, which
    makes parsing ~3x slower. The view still maps the file (its base keeps the memmap alive)."""

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, mtime_ns: int, size: int) -> _Reader:
    return _Reader(path)


def open_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
    """A parsed GGUF file. Parsing the metadata takes seconds, so the last two files opened
    stay cached (keyed by path, mtime and size; the reader is read-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    st = path.stat()
    try:
        return _open_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)
    except Exception as e:  # truncated/corrupt file: name it
        raise ValueError(f"{path}: cannot read GGUF file: {e}") from e


def gguf_metadata(reader) -> dict[str, Any]:
    """All key/value metadata as Python values (strings decoded, arrays as lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's q/k row permutation (rows = n_head * head_dim, weights or biases).

    llama.cpp stores each head's rows as (head_dim/2, 2) interleaved pairs; HF as (2, head_dim/2)
    halves. `n_head` is the number of heads the rows span (kv heads for k)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"q/k rows {rows} not divisible by 2 * heads ({n_head})")
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _dequant(t) -> np.ndarray:
    arr = gguf.quants.dequantize(t.data, t.tensor_type)
    want = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
    if arr.size != math.prod(want):
        raise ValueError(f"GGUF tensor {t.name!r}: {arr.size} values for shape {want}")
    # np.array copies: F32/F16 dequantisation returns views into the memory-mapped file.
    return np.array(arr.reshape(want), dtype=np.float32)


# ---- config --------------------------------------------------------------------------------
def gguf_config(meta: dict[str, Any], tensor_shapes: dict[str, tuple],
                rope_freqs: np.ndarray | None = None, **overrides) -> DecoderConfig:
    """DecoderConfig from GGUF metadata. `tensor_shapes` (name -> numpy-order shape) decides
    tied embeddings (no `output.weight`) and q/k/v biases; `rope_freqs` is the value of the
    `rope_freqs.weight` tensor that llama3-scaled files carry instead of scaling metadata."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"GGUF field 'general.architecture'={arch!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ARCHS)}")

    def key(k, default=None, required=False):
        full = f"{arch}.{k}"
        if full not in meta:
            if required:
                raise ValueError(f"GGUF file lacks metadata field {full!r}")
            return default
        return meta[full]

    hidden = int(key("embedding_length", required=True))
    heads = int(key("attention.head_count", required=True))
    kv_heads = int(key("attention.head_count_kv", heads))
    head_dim = int(key("attention.key_length", hidden // heads))
    rot = key("rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ValueError(f"GGUF field '{arch}.rope.dimension_count'={rot} != head_dim {head_dim}: "
                         "partial rotary embeddings are not supported")
    if key("attention.sliding_window"):
        raise ValueError(f"GGUF field '{arch}.attention.sliding_window' is not supported")
    if "token_embd.weight" not in tensor_shapes:
        raise ValueError("GGUF file has no 'token_embd.weight' tensor")
    vocab = int(tensor_shapes["token_embd.weight"][0])
    n_tokens = len(meta.get("tokenizer.ggml.tokens") or [])
    if n_tokens and n_tokens != vocab:
        # the weights decide the logits' width; extra rows are padding the tokenizer never emits
        log.warning("GGUF token list has %d entries, embedding has %d rows; using %d",
                    n_tokens, vocab, vocab)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    kw = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length", required=True)),
        num_layers=int(key("block_count", required=True)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6 if arch == "qwen2" else 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(arch, meta, key, rope_freqs, head_dim),
        max_position_embeddings=int(key("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_shapes,
        qkv_bias="blk.0.attn_q.bias" in tensor_shapes,
        model_type=arch,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos,
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id", eos),
    )
    kw.update(overrides)
    return DecoderConfig(**kw)


def _rope_scaling(arch, meta, key, rope_freqs, head_dim):
    """Rope scaling from `{arch}.rope.scaling.*` keys; llama3 files instead carry per-frequency
    factors in a `rope_freqs.weight` tensor."""
    rtype = key("rope.scaling.type")
    factor = key("rope.scaling.factor")
    if rtype in (None, "none") and (factor is None or float(factor) == 1.0):
        if rope_freqs is not None:
            return fit_llama3_rope(rope_freqs, float(key("rope.freq_base", 10000.0)), head_dim)
        return None
    if rtype == "linear":
        return ("linear", float(factor), 1.0, 4.0, int(key("rope.scaling.original_context_length", 8192)))
    raise ValueError(f"GGUF field '{arch}.rope.scaling.type'={rtype!r} is not supported "
                     "(supported: none, linear, llama3 via rope_freqs)")


def fit_llama3_rope(freq_factors: np.ndarray, theta: float, head_dim: int) -> tuple:
    """llama3 rope scaling parameters reproducing llama.cpp's `rope_freqs` factors.

    The factors only depend on the two band edges (wavelengths orig/low and orig/high) and the
    factor, so we fix low_freq_factor=1 and solve the rest from the blended middle band (the
    smoothing weight is linear in 1/wavelength there); the fit is checked by recomputing."""
    ff = np.asarray(freq_factors, np.float64)
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wl = 2 * math.pi / inv
    factor = float(ff.max())
    mid = (ff > 1 + 1e-6) & (ff < factor * (1 - 1e-6))
    if ff.shape != inv.shape or factor <= 1 or mid.sum() < 2:
        raise ValueError("GGUF tensor 'rope_freqs.weight' is not a llama3 rope scaling this loader "
                         "can express (needs >= 2 frequencies in the blended band)")
    # 1/ff = (1 - s)/factor + s  =>  s = (1/ff - 1/factor) / (1 - 1/factor);  s = a/wl + b
    s = (1 / ff[mid] - 1 / factor) / (1 - 1 / factor)
    a, b = np.polyfit(1 / wl[mid], s, 1)
    low_wl, high_wl = -a / b, a / (1 - b)  # s = 0 at low_wl, s = 1 at high_wl
    # round to the clean values real configs use (8192, 4.0) when the fit is that close
    orig = round(low_wl) if abs(low_wl - round(low_wl)) < 1e-3 * low_wl else float(low_wl)
    hi = round(low_wl / high_wl, 4)
    scaling = ("llama3", round(factor, 6), 1.0, hi, orig)
    check = _llama3_factors(inv, scaling)
    if not np.allclose(check, ff, rtol=1e-4, atol=1e-5):
        raise ValueError("GGUF tensor 'rope_freqs.weight' does not match a llama3 rope scaling")
    return scaling


def _llama3_factors(inv, scaling):
    """Divisors of inv_freq under llama3 scaling (numpy mirror of ops.rope_inv_freq)."""
    _, factor, lo, hi, orig = scaling
    wl = 2 * math.pi / inv
    smooth = np.clip((orig / wl - lo) / (hi - lo), 0.0, 1.0)
    scaled = inv * ((1 - smooth) / factor + smooth)
    return inv / scaled


# ---- tensors -------------------------------------------------------------------------------
def gguf_to_hf_tensors(reader, cfg: DecoderConfig) -> dict[str, np.ndarray]:
    """Dequantised tensors under HF names, torch layout, q/k un-permuted for `llama` files."""
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue  # folded into cfg.rope_scaling
        if t.name in _TOP_MAP:
            out[_TOP_MAP[t.name]] = _dequant(t)
            continue
        m = _BLK_RE.fullmatch(t.name)
        if not m or m.group(2) not in _BLOCK_MAP:
            raise ValueError(f"GGUF tensor {t.name!r} has no counterpart in this decoder")
        layer, stem, kind = m.groups()
        arr = _dequant(t)
        if cfg.model_type == "llama" and stem in ("attn_q", "attn_k"):
            arr = unpermute_qk(arr, cfg.num_heads if stem == "attn_q" else cfg.num_kv_heads)
        out[f"model.layers.{layer}.{_BLOCK_MAP[stem]}.{kind}"] = arr
    return out


def _shapes(reader) -> dict[str, tuple]:
    return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}


def load_gguf(path: str | os.PathLike, *, with_tokenizer: bool = True, mesh=None, **cfg_overrides):
    """-> (Decoder, tokenizer or None) from one GGUF file (the file is parsed once)."""
    from align_jax.models import hf_io

    reader = open_gguf(path)
    meta = gguf_metadata(reader)
    shapes = _shapes(reader)
    ff = next((_dequant(t) for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    cfg = gguf_config(meta, shapes, rope_freqs=ff, **cfg_overrides)
    flat = hf_io.hf_to_params(gguf_to_hf_tensors(reader, cfg), cfg)
    model = hf_io.build_decoder(cfg, flat, mesh=mesh)
    tok = None
    if with_tokenizer:
        from align_jax.models.tokenizer import tokenizer_from_gguf_metadata

        tok = tokenizer_from_gguf_metadata(meta, source=str(path))
    return model, tok
