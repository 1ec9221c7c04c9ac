"""What a LoRA checkpoint records about the base model it was trained on.

A LoRA run's train state, and so its checkpoint, holds only what training changes: the adapters
(and a score head, which is a ``LoRAParam`` too), their optimizer moments, the step and the rng.
The frozen base weights are not saved — they are read again from the model's source when the
run starts. An adapter checkpoint therefore only means something on top of the SAME base: each
checkpoint's ``extra`` records ``{"source": path or hub id, "fingerprint": content hash}``
(:func:`base_identity`), and resuming onto a base whose fingerprint differs is refused with a
:class:`~align_jax.errors.ConfigError` naming both (:func:`check_same_base`). Full fine-tuning
saves every weight, as before, and records nothing here.

The fingerprint is computed on device, shard by shard, so a base sharded over many hosts is
hashed without gathering it: every array is viewed as unsigned integers, two position-weighted
sums modulo 2**32 are taken (exact integer arithmetic: the same on any mesh), and those sums,
with each array's path, shape and dtype, are hashed with SHA-256 on the host. It changes with
any bit of any weight (it is not meant to resist a deliberately crafted collision).
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from align_jax.errors import ConfigError

_U32 = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _as_u32(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 (8-byte dtypes become pairs of words)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = lax.bitcast_convert_type(x, _U32[x.dtype.itemsize])
    return bits.astype(jnp.uint32)


def _sums(x: jax.Array) -> jax.Array:
    """[2] uint32: two differently mixed, position-weighted sums of the array's words."""
    w = _as_u32(x)
    pos = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(w.ndim)):  # flat index without reshaping (keeps the sharding)
        pos = pos + lax.broadcasted_iota(jnp.uint32, w.shape, d) * jnp.uint32(stride % 2**32)
        stride *= w.shape[d]
    h1 = jnp.sum(w * (pos * jnp.uint32(2654435761) + jnp.uint32(0x9E3779B9) | jnp.uint32(1)),
                 dtype=jnp.uint32)
    mixed = (w ^ (w >> 15)) * jnp.uint32(0x85EBCA6B) + pos
    h2 = jnp.sum(mixed ^ (mixed >> 13), dtype=jnp.uint32)
    return jnp.stack([h1, h2])


_sums_tree = jax.jit(lambda leaves: [_sums(x) for x in leaves])


def fingerprint(tree) -> str:
    """Content hash (16 hex digits) of every array in ``tree`` (paths, shapes, dtypes, bits)."""
    flat = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(x, "dtype") and hasattr(x, "shape")]
    sums = jax.device_get(_sums_tree([jnp.asarray(x) for _, x in flat]))
    h = hashlib.sha256()
    for (path, x), s in zip(flat, sums):
        h.update(f"{path}|{tuple(x.shape)}|{jnp.dtype(x.dtype).name}|{int(s[0])}|{int(s[1])};"
                 .encode())
    return h.hexdigest()[:16]


def source_of(model) -> str | None:
    """Where the model's weights were read from (``load_causal_lm`` sets ``model.source``), also
    when the decoder is wrapped (a score head's backbone). None for a model built in code."""
    for _, m in _modules(model):
        src = getattr(m, "source", None)
        if isinstance(src, str):
            return src
    return None


def _modules(model):
    from flax import nnx

    return nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules()


def base_identity(model, frozen) -> dict[str, Any] | None:
    """``{"source", "fingerprint"}`` of the frozen base of a LoRA model (``frozen``: the
    ModelBundle's frozen State); None for full fine-tuning (the checkpoint holds the weights)."""
    from align_jax.train.state import has_lora

    if not has_lora(model):
        return None
    return {"source": source_of(model) or "(built in code)", "fingerprint": fingerprint(frozen)}


def check_same_base(saved: dict | None, current: dict | None, where) -> None:
    """ConfigError when the checkpoint at ``where`` was trained on another base than this run's.
    A checkpoint without a record (written before records existed, or by full fine-tuning)
    passes: the tree-shape check already refuses a LoRA/full mix-up."""
    if not saved or not current or saved.get("fingerprint") == current.get("fingerprint"):
        return
    raise ConfigError(
        f"checkpoint {where} holds LoRA adapters trained on base model {saved.get('source')} "
        f"(weights fingerprint {saved.get('fingerprint')}), but this run's base is "
        f"{current.get('source')} (fingerprint {current.get('fingerprint')}). Adapters only fit "
        "the base they were trained on: resume with model= the original base, or use a new "
        "out_dir")
