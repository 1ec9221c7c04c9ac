"""HF safetensors <-> our stacked NNX decoder parameters.

HF stores one tensor per layer in torch's [out, in] layout; we store [L, in, out] stacks. The maps
below are the single place that knows both namings (import and export share them): the llama
names, Gemma's four norms, q/k norms, and Phi-3's fused projections (split on import, fused on
export, so LoRA and the sharding rules see the same separate q/k/v and gate/up everywhere)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.errors import DivergenceError
from align_jax.models.config import DecoderConfig
from align_jax.paths import resolve_dir
from align_jax.models.llama import Decoder, _proj_shapes

# our stacked name -> HF per-layer suffix (after "model.layers.{i}.")
LAYER_MAP = {
    "attn_norm": "input_layernorm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "wq": "self_attn.q_proj.weight", "bq": "self_attn.q_proj.bias",
    "wk": "self_attn.k_proj.weight", "bk": "self_attn.k_proj.bias",
    "wv": "self_attn.v_proj.weight", "bv": "self_attn.v_proj.bias",
    "wo": "self_attn.o_proj.weight", "bo": "self_attn.o_proj.bias",
    "w_gate": "mlp.gate_proj.weight", "b_gate": "mlp.gate_proj.bias",
    "w_up": "mlp.up_proj.weight", "b_up": "mlp.up_proj.bias",
    "w_down": "mlp.down_proj.weight", "b_down": "mlp.down_proj.bias",
}
# Gemma 2/3: "post_attention_layernorm" is the norm on the attention OUTPUT (llama's pre-MLP norm
# has that name); the pre-MLP norm is "pre_feedforward_layernorm".
GEMMA_NORMS = {
    "attn_post_norm": "post_attention_layernorm.weight",
    "mlp_norm": "pre_feedforward_layernorm.weight",
    "mlp_post_norm": "post_feedforward_layernorm.weight",
}
QK_NORMS = {"q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}
# HF tensor -> our projections it concatenates along the output rows (Phi-3)
FUSED = {"self_attn.qkv_proj.weight": ("wq", "wk", "wv"),
         "mlp.gate_up_proj.weight": ("w_gate", "w_up")}
TOP_MAP = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
           "lm_head": "lm_head.weight"}


def layer_map(cfg: DecoderConfig) -> dict[str, str]:
    """Our stacked name -> HF per-layer suffix for this config's family (unfused names)."""
    m = dict(LAYER_MAP)
    if cfg.sandwich_norms:
        m.update(GEMMA_NORMS)
    if cfg.qk_norm:
        m.update(QK_NORMS)
    return m


def _fused(cfg: DecoderConfig) -> dict:
    return FUSED if cfg.model_type == "phi3" else {}


def _is_matrix(name: str) -> bool:
    return name.startswith("w") or name == "lm_head"


def read_safetensors_dir(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint dir (single file or sharded with an index), as numpy."""
    from safetensors.numpy import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            out.update(_load_any_dtype(path / f, load_file))
        except Exception as e:  # corrupt/truncated shard: say which file
            raise ValueError(f"{path / f}: cannot read safetensors file: {e}") from e
    return out


def _load_any_dtype(file: Path, load_file) -> dict[str, np.ndarray]:
    try:
        return load_file(str(file))
    except TypeError:
        # numpy has no bfloat16: go through torch-free flax loader via ml_dtypes
        from safetensors import safe_open

        with safe_open(str(file), framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: DecoderConfig) -> dict[str, np.ndarray]:
    """HF tensor dict -> {our flat name: array} ("layers.wq", "embed", ...)."""
    t = {re.sub(r"^(base_model\.model\.|transformer\.)", "", k): v for k, v in tensors.items()}
    lmap = layer_map(cfg)
    out: dict[str, np.ndarray] = {}

    def get(key):
        if key not in t:
            raise KeyError(f"checkpoint is missing tensor {key!r}")
        return np.asarray(t[key])

    sizes = {n: s[1] for n, s in _proj_shapes(cfg).items()}
    for suffix, names in _fused(cfg).items():  # split into the unfused HF names first
        for i in range(cfg.num_layers):
            parts = np.split(get(f"model.layers.{i}.{suffix}"),
                             np.cumsum([sizes[n] for n in names])[:-1], axis=0)
            t.update({f"model.layers.{i}.{lmap[n]}": p for n, p in zip(names, parts)})
    out["embed"] = get(TOP_MAP["embed"])
    out["final_norm"] = get(TOP_MAP["final_norm"])
    if not cfg.tie_word_embeddings:
        out["lm_head"] = get(TOP_MAP["lm_head"]).T
    for name, suffix in lmap.items():
        if f"model.layers.0.{suffix}" not in t:
            continue  # absent biases; a missing weight is reported by build_decoder
        # HF stores [out, in]; ours is [in, out]: transpose while stacking (one contiguous copy)
        layers = [get(f"model.layers.{i}.{suffix}") for i in range(cfg.num_layers)]
        out["layers." + name] = np.stack([x.T for x in layers] if _is_matrix(name) else layers)
    return out


def params_to_hf(flat: Mapping[str, np.ndarray], cfg: DecoderConfig) -> dict[str, np.ndarray]:
    """Inverse of :func:`hf_to_params` (LoRA must be merged first)."""
    lmap = layer_map(cfg)
    out = {}
    for name, arr in flat.items():
        arr = np.asarray(arr)
        if name.startswith("layers."):
            short = name.split(".", 1)[1]
            if short.startswith("lora_"):
                continue
            for i in range(cfg.num_layers):
                a = arr[i].T if _is_matrix(short) else arr[i]
                out[f"model.layers.{i}.{lmap[short]}"] = np.ascontiguousarray(a)
        else:
            out[TOP_MAP[name]] = np.ascontiguousarray(arr.T if name == "lm_head" else arr)
    for suffix, names in _fused(cfg).items():
        for i in range(cfg.num_layers):
            parts = [out.pop(f"model.layers.{i}.{lmap[n]}") for n in names]
            out[f"model.layers.{i}.{suffix}"] = np.concatenate(parts, axis=0)
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def flat_params(model: Decoder) -> dict[str, jax.Array]:
    """{"embed": ..., "layers.wq": ...} of every Variable value in the model."""
    state = nnx.state(model)
    flat = {}
    for path, v in nnx.to_flat_state(state):
        flat[".".join(str(p) for p in path)] = v[...] if isinstance(v, nnx.Variable) else v
    return flat


def abstract_decoder(cfg: DecoderConfig) -> Decoder:
    """A shape-only Decoder (no arrays allocated, no random draws)."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def build_decoder(cfg: DecoderConfig, flat: Mapping[str, np.ndarray], mesh=None) -> Decoder:
    """A Decoder holding `flat` (host arrays), built without first drawing random values for
    every weight (seconds of init compiles for tiny models, minutes and twice the memory for 7B
    ones). With a `mesh`, each array goes from host memory straight to its shards (rules table),
    so a model larger than one device's memory never lands whole on one device; multi-host
    safe (each process transfers only its addressable shards). LoRA adapters absent from `flat`
    get the Decoder's own init (`_fresh_lora`)."""
    graphdef, state = nnx.split(abstract_decoder(cfg))
    items = [(".".join(str(p) for p in path), var) for path, var in nnx.to_flat_state(state)]
    fresh = _fresh_lora(cfg) if any(n not in flat and "lora_" in n for n, _ in items) else {}
    for name, var in items:
        src = flat.get(name, fresh.get(name))
        if src is None:
            raise KeyError(f"checkpoint has no value for parameter {name!r}")
        want = var.get_value()
        if tuple(np.shape(src)) != tuple(want.shape):
            raise ValueError(f"parameter {name!r}: checkpoint shape {np.shape(src)} "
                             f"!= model {want.shape}")
        host = np.asarray(src, dtype=want.dtype)
        if mesh is None:
            var.set_value(jnp.asarray(host))
        else:
            from align_jax.sharding import named_sharding

            sh = named_sharding(var.get_metadata().get("axes"), host.shape, mesh)
            var.set_value(jax.make_array_from_callback(host.shape, sh, lambda idx, h=host: h[idx]))
    return nnx.merge(graphdef, state)


def _fresh_lora(cfg: DecoderConfig) -> dict:
    """The LoRA initial values `Decoder(cfg, rngs=nnx.Rngs(0))` would hold. Under jit only the
    adapters are outputs, so XLA drops the base weights' random draws (never materialised)."""
    from align_jax.models.llama import LoRAParam

    @jax.jit
    def init():
        st = nnx.state(Decoder(cfg, rngs=nnx.Rngs(0)), LoRAParam)
        return {".".join(str(p) for p in path): v.get_value() for path, v in nnx.to_flat_state(st)}

    return init()


def load_hf_dir(path: str | os.PathLike, mesh=None, **cfg_overrides) -> Decoder:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no config.json (not a HF checkpoint dir)")
    cfg = DecoderConfig.from_hf(json.loads(cfg_file.read_text()), **cfg_overrides)
    tensors = read_safetensors_dir(path)
    if not cfg.tie_word_embeddings and "lm_head.weight" not in tensors:
        cfg = cfg.replace(tie_word_embeddings=True)  # no separate head in the file = tied
    return build_decoder(cfg, hf_to_params(tensors, cfg), mesh=mesh)


def merged_flat_params(model: Decoder) -> dict[str, np.ndarray]:
    """Flat params with LoRA folded in: W + A @ B * scale (what an exported model holds)."""
    cfg = model.cfg
    flat = {k: np.asarray(jax.device_get(v), dtype=np.float32) for k, v in flat_params(model).items()}
    for name in list(flat):
        m = re.fullmatch(r"layers\.lora_a_(\w+)", name)
        if m:
            target = m.group(1)
            a, b = flat.pop(name), flat.pop(f"layers.lora_b_{target}")
            flat[f"layers.{target}"] = flat[f"layers.{target}"] + np.einsum("lir,lro->lio", a, b) * cfg.lora_scale
    return flat


def save_hf_dir(model: Decoder, out_dir: str | os.PathLike, dtype: str = "float32",
                max_shard_bytes: int = 2 << 30) -> Path:
    """Write config.json + model.safetensors (sharded with an index past `max_shard_bytes`).
    Files are written to a temp name and renamed, so a killed export never leaves a torn file."""
    from safetensors.numpy import save_file

    cfg = model.cfg.replace(lora_rank=0)
    tensors = params_to_hf(merged_flat_params(model), cfg)
    np_dtype = np.float32 if dtype == "float32" else np.float16
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
    # a diverged policy is not a model: refuse before writing anything (also catches float16
    # overflow of large float32 weights)
    bad = {k: int(np.size(v) - np.isfinite(v).sum()) for k, v in tensors.items()
           if not np.isfinite(v).all()}
    if bad:
        first = sorted(bad)[0]
        raise DivergenceError(
            f"refusing to export non-finite weights: {len(bad)} of {len(tensors)} tensors hold "
            f"NaN/inf ({sum(bad.values())} values; e.g. {first}: {bad[first]} of "
            f"{np.size(tensors[first])}){' in ' + dtype if dtype != 'float32' else ''}")
    out = resolve_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = cfg.to_hf()
    hf_cfg["torch_dtype"] = dtype
    shards, cur, size = [], {}, 0
    for k in sorted(tensors):
        if cur and size + tensors[k].nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = tensors[k]
        size += tensors[k].nbytes
    shards.append(cur)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        tmp = out / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / name)
    if len(shards) > 1:
        wm = {k: n for n, s in zip(names, shards) for k in s}
        _atomic_write(out / "model.safetensors.index.json",
                      json.dumps({"metadata": {}, "weight_map": wm}, indent=1))
    _atomic_write(out / "config.json", json.dumps(hf_cfg, indent=1))
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
