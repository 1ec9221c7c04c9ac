"""Decoder configuration, read from (and written back to) a HF `config.json`.

One dataclass covers every supported family; each family is the llama block plus a few switches
(q/k norm, Gemma's (1 + w) norms and sandwich norms, soft-capping, per-layer sliding windows and
RoPE bases, Phi-3's LongRoPE). The switches are static config, the per-layer pattern is data
(`local_layers`), so one stacked `lax.scan` runs every family.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from align_jax.errors import ConfigError

# model_type -> (HF architecture class, family switches read by `from_hf`)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaForCausalLM", {}),
    "mistral": ("MistralForCausalLM", dict(window="all")),
    "qwen2": ("Qwen2ForCausalLM", dict(window="types", eps=1e-6, qkv_bias=True)),
    "qwen3": ("Qwen3ForCausalLM", dict(window="types", eps=1e-6, qk_norm=True)),
    "gemma2": ("Gemma2ForCausalLM", dict(window="types", eps=1e-6, gemma=True, pattern=2)),
    "gemma3_text": ("Gemma3ForCausalLM", dict(window="types", eps=1e-6, gemma=True, pattern=6,
                                              qk_norm=True, theta=1e6, local_theta=1e4)),
    "phi3": ("Phi3ForCausalLM", dict(window="all", fused=True)),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# HF activation name -> ours ("gelu_pytorch_tanh"/"gelu_new" are the same tanh approximation)
_ACTS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_pytorch_tanh",
         "gelu_new": "gelu_pytorch_tanh", "gelu": "gelu"}
_SUPPORTED_ROPE = ("default", "llama3", "linear", "longrope")
_LAYER_TYPES = ("full_attention", "sliding_attention")


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
    # -- family switches (defaults = llama) --
    hidden_act: str = "silu"  # "silu" | "gelu_pytorch_tanh" | "gelu" (exact erf)
    norm_offset: float = 0.0  # Gemma stores RMSNorm weights as w and applies (1 + w)
    sandwich_norms: bool = False  # Gemma 2/3: extra norms on the attention and MLP outputs
    qk_norm: bool = False  # Qwen3 / Gemma 3: RMSNorm over head_dim on q and k, before RoPE
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    query_pre_attn_scalar: float | None = None  # attention scale scalar**-0.5 (None: head_dim)
    attn_logit_softcapping: float | None = None  # cap * tanh(scores / cap)
    final_logit_softcapping: float | None = None
    # per layer "full_attention" | "sliding_attention"; None = every layer uses sliding_window
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float | None = None  # Gemma 3: RoPE base of the sliding layers
    partial_rotary_factor: float = 1.0  # RoPE on the first head_dim * factor dims only
    # Phi-3 LongRoPE: (short_factor, long_factor, original_max_position_embeddings,
    # factor or None, attention_factor or None), the last two as written in config.json
    longrope: tuple | None = None
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

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def local_layers(self) -> tuple[bool, ...]:
        """Per layer: does the sliding window apply (and, with `rope_local_theta`, the local
        RoPE base)."""
        if not self.sliding_window:
            return (False,) * self.num_layers
        if self.layer_types is None:
            return (True,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf(cls, d: dict[str, Any], **overrides) -> "DecoderConfig":
        """ConfigError naming the config.json field for anything this decoder cannot run."""
        mt = d.get("model_type", "llama")
        if mt not in FAMILIES:
            raise ConfigError(f"config.json field 'model_type'={mt!r} is not supported; "
                              f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        fam = FAMILIES[mt][1]
        gemma = fam.get("gemma", False)
        for field in ("quantization_config", "use_bidirectional_attention"):
            if d.get(field):
                raise ConfigError(f"config.json field {field!r} is not supported")
        act_key = "hidden_activation" if gemma and d.get("hidden_activation") else "hidden_act"
        act = d.get(act_key, "gelu_pytorch_tanh" if gemma else "silu")
        if act not in _ACTS:
            raise ConfigError(f"config.json field {act_key!r}={act!r} is not supported; "
                              f"supported: {', '.join(_ACTS)}")
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        layers = int(d["num_hidden_layers"])
        head_dim = int(d.get("head_dim") or hidden // heads)
        eos = d.get("eos_token_id")
        bias = bool(d.get("attention_bias", False)) and mt != "phi3"  # Phi-3 has no biases
        window, layer_types = _windows(d, mt, fam, layers)
        rope = _rope(d, mt, fam)
        kw = dict(
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", fam.get("eps", 1e-5))),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
            qkv_bias=bias or fam.get("qkv_bias", False),
            o_bias=bias and not fam.get("qkv_bias", False),
            mlp_bias=bool(d.get("mlp_bias", False)) and mt == "llama",
            sliding_window=window,
            layer_types=layer_types,
            model_type=mt,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"),
            hidden_act=_ACTS[act],
            qk_norm=fam.get("qk_norm", False),
            **rope,
        )
        if gemma:
            # Gemma 3 ignores attn_logit_softcapping (transformers never passes it to its
            # attention); Gemma 2 applies both caps.
            kw.update(norm_offset=1.0, sandwich_norms=True, embed_scale=True,
                      # kept as written: transformers 5 insists on an int here
                      query_pre_attn_scalar=d.get("query_pre_attn_scalar", 256),
                      attn_logit_softcapping=(_opt_float(d.get("attn_logit_softcapping", 50.0))
                                              if mt == "gemma2" else None),
                      final_logit_softcapping=_opt_float(
                          d.get("final_logit_softcapping", 30.0 if mt == "gemma2" else None)))
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        mt = self.model_type
        fam = FAMILIES[mt][1]
        d: dict[str, Any] = {
            "model_type": mt,
            "architectures": [FAMILIES[mt][0]],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
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
        if mt == "llama":
            d["attention_bias"] = self.qkv_bias
            d["mlp_bias"] = self.mlp_bias
        if mt in ("qwen3", "gemma2", "gemma3_text"):
            d["attention_bias"] = self.qkv_bias
        if fam.get("window") == "all":
            d["sliding_window"] = self.sliding_window
        elif fam.get("window") == "types":
            local = self.local_layers
            d["layer_types"] = [_LAYER_TYPES[int(x)] for x in local]
            d["sliding_window"] = self.sliding_window
            if mt in ("qwen2", "qwen3"):
                d["use_sliding_window"] = any(local)
                d["max_window_layers"] = local.index(True) if any(local) else self.num_layers
        if fam.get("gemma"):
            d.update(hidden_activation=self.hidden_act,
                     query_pre_attn_scalar=self.query_pre_attn_scalar,
                     attn_logit_softcapping=self.attn_logit_softcapping,
                     final_logit_softcapping=self.final_logit_softcapping)
        if self.rope_local_theta is not None:
            d["rope_local_base_freq"] = self.rope_local_theta
        if self.partial_rotary_factor != 1.0:
            d["partial_rotary_factor"] = self.partial_rotary_factor
        if self.rope_scaling:
            rtype, factor, lo, hi, orig = self.rope_scaling
            d["rope_scaling"] = {"rope_type": rtype, "factor": factor}
            if rtype == "llama3":
                d["rope_scaling"].update(low_freq_factor=lo, high_freq_factor=hi,
                                         original_max_position_embeddings=orig)
        if self.longrope:
            short, long, orig, factor, attn_factor = self.longrope
            # "type" + the two lists is the form every transformers version's Phi-3 accepts
            rs = {"type": "longrope", "short_factor": list(short), "long_factor": list(long)}
            if factor is not None:
                rs["factor"] = factor
            if attn_factor is not None:
                rs["attention_factor"] = attn_factor
            d["rope_scaling"] = rs
            d["original_max_position_embeddings"] = orig
        return d

    def param_count(self) -> int:
        d, f, L = self.hidden_size, self.intermediate_size, self.num_layers
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        norms = (4 if self.sandwich_norms else 2) * d + (2 * self.head_dim if self.qk_norm else 0)
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + norms
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + emb + d


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def _windows(d: dict, mt: str, fam: dict, layers: int) -> tuple[int | None, tuple | None]:
    """(sliding_window, layer_types) as transformers 5 decides them for this family."""
    how = fam.get("window")
    if how is None:
        return None, None
    if how == "all":
        sw = d.get("sliding_window")
        return (int(sw) if sw else None), None
    sw = d.get("sliding_window", 4096)  # the transformers default of these families
    if mt in ("qwen2", "qwen3") and not d.get("use_sliding_window", False):
        sw = None  # transformers drops the window unless use_sliding_window
    lt = d.get("layer_types")
    if lt is None:
        if mt in ("qwen2", "qwen3"):
            first = int(d.get("max_window_layers", 28))
            lt = ["sliding_attention" if sw and i >= first else "full_attention"
                  for i in range(layers)]
        else:  # Gemma: every `pattern`-th layer is global, the others slide
            pattern = int(d.get("sliding_window_pattern", fam["pattern"]))
            lt = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                  for i in range(layers)]
    bad = [t for t in lt if t not in _LAYER_TYPES]
    if bad or len(lt) != layers:
        raise ConfigError(f"config.json field 'layer_types' has {bad[0] if bad else len(lt)!r}; "
                          f"supported: {layers} entries of {', '.join(_LAYER_TYPES)}")
    return (int(sw) if sw else None), tuple(lt)


def _rope(d: dict, mt: str, fam: dict) -> dict:
    """RoPE fields from transformers 4 (`rope_theta` + `rope_scaling`) or 5 (`rope_parameters`,
    nested per layer type for Gemma 3) configs."""
    rp = d.get("rope_parameters") or {}
    nested = isinstance(rp.get("full_attention"), dict) or isinstance(rp.get("sliding_attention"),
                                                                        dict)
    glob = dict(rp.get("full_attention") or {}) if nested else {**(d.get("rope_scaling") or {}),
                                                                 **rp}
    if nested and d.get("rope_scaling"):
        glob.update(d["rope_scaling"])
    theta = float(glob.get("rope_theta", d.get("rope_theta", fam.get("theta", 10000.0))))
    prf = float(glob.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)))
    out: dict[str, Any] = dict(rope_theta=theta, rope_scaling=None, partial_rotary_factor=prf)
    if "local_theta" in fam:
        loc = dict(rp.get("sliding_attention") or {}) if nested else {}
        ltype = loc.get("rope_type", loc.get("type", "default"))
        if ltype != "default":
            raise ConfigError("config.json field 'rope_parameters.sliding_attention.rope_type'="
                              f"{ltype!r} is not supported (default only)")
        out["rope_local_theta"] = float(loc.get("rope_theta", d.get("rope_local_base_freq",
                                                                     fam["local_theta"])))
    rtype = glob.get("rope_type", glob.get("type", "default"))
    if mt == "phi3" and rtype in ("su", "yarn"):
        rtype = "longrope"  # transformers' Phi-3 reads its legacy names as LongRoPE
    if rtype not in _SUPPORTED_ROPE:
        raise ConfigError(f"config.json field 'rope_scaling.rope_type'={rtype!r} is not "
                          f"supported; supported: {', '.join(_SUPPORTED_ROPE)}")
    if rtype == "longrope":
        orig = glob.get("original_max_position_embeddings",
                        d.get("original_max_position_embeddings"))
        if orig is None or "short_factor" not in glob or "long_factor" not in glob:
            raise ConfigError("config.json field 'rope_scaling' (longrope) needs short_factor, "
                              "long_factor and original_max_position_embeddings")
        short, long = tuple(map(float, glob["short_factor"])), tuple(map(float, glob["long_factor"]))
        half = int(int(d.get("head_dim") or int(d["hidden_size"]) // int(d["num_attention_heads"]))
                   * prf) // 2
        if len(short) != half or len(long) != half:
            raise ConfigError(f"config.json field 'rope_scaling.short_factor/long_factor' needs "
                              f"{half} entries, has {len(short)}/{len(long)}")
        out["longrope"] = (short, long, int(orig), _opt_float(glob.get("factor")),
                           _opt_float(glob.get("attention_factor")))
    elif rtype != "default":
        out["rope_scaling"] = (
            rtype,
            float(glob.get("factor", 1.0)),
            float(glob.get("low_freq_factor", 1.0)),
            float(glob.get("high_freq_factor", 4.0)),
            int(glob.get("original_max_position_embeddings", 8192)),
        )
    return out


def longrope_attention_factor(cfg: DecoderConfig) -> float:
    """LongRoPE's cos/sin multiplier, as transformers derives it when the config omits it."""
    _, _, orig, factor, attn = cfg.longrope
    if attn is not None:
        return attn
    factor = factor if factor is not None else cfg.max_position_embeddings / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
