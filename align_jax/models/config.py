"""Decoder configuration, read from (and written back to) a HF `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_SUPPORTED_ACTS = ("silu", "swish")
_SUPPORTED_ROPE = ("default", "llama3", "linear")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # (rope_type, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    rope_scaling: tuple | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None
    pad_token_id: int | None = None
    # training/runtime knobs (not part of the HF config)
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("wq", "wv")

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / max(self.lora_rank, 1)

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf(cls, d: dict[str, Any], **overrides) -> "DecoderConfig":
        mt = d.get("model_type", "llama")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"config.json field 'model_type'={mt!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        act = d.get("hidden_act", "silu")
        if act not in _SUPPORTED_ACTS:
            raise ValueError(f"config.json field 'hidden_act'={act!r} is not supported (silu only)")
        if mt == "qwen2" and d.get("use_sliding_window"):
            raise ValueError("config.json field 'use_sliding_window'=true is not supported for qwen2")
        # transformers v5 writes `rope_parameters`; v4 writes `rope_theta` + `rope_scaling`.
        rp = d.get("rope_parameters") or {}
        rs = d.get("rope_scaling") or (rp if rp.get("rope_type", "default") != "default" else None)
        theta = float(rp.get("rope_theta", d.get("rope_theta", 10000.0)))
        scaling = None
        if rs:
            rtype = rs.get("rope_type", rs.get("type", "default"))
            if rtype not in _SUPPORTED_ROPE:
                raise ValueError(
                    f"config.json field 'rope_scaling.rope_type'={rtype!r} is not supported; "
                    f"supported: {', '.join(_SUPPORTED_ROPE)}"
                )
            if rtype != "default":
                scaling = (
                    rtype,
                    float(rs.get("factor", 1.0)),
                    float(rs.get("low_freq_factor", 1.0)),
                    float(rs.get("high_freq_factor", 4.0)),
                    int(rs.get("original_max_position_embeddings", 8192)),
                )
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        eos = d.get("eos_token_id")
        sw = d.get("sliding_window") if mt == "mistral" else None
        kw = dict(
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6 if mt == "qwen2" else 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=bool(d.get("attention_bias", False)) or mt == "qwen2",
            o_bias=bool(d.get("attention_bias", False)) and mt != "qwen2",
            mlp_bias=bool(d.get("mlp_bias", False)),
            sliding_window=int(sw) if sw else None,
            model_type=mt,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model_type": self.model_type,
            "architectures": [
                {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}[self.model_type]
            ],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
        }
        if self.model_type == "llama":
            d["attention_bias"] = self.qkv_bias
            d["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        if self.rope_scaling:
            rtype, factor, lo, hi, orig = self.rope_scaling
            d["rope_scaling"] = {"rope_type": rtype, "factor": factor}
            if rtype == "llama3":
                d["rope_scaling"].update(low_freq_factor=lo, high_freq_factor=hi,
                                         original_max_position_embeddings=orig)
        return d

    def param_count(self) -> int:
        d, f, L = self.hidden_size, self.intermediate_size, self.num_layers
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + emb + d
