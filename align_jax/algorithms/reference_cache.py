"""Reference log-probs computed ONCE per dataset (:class:`~align_jax.data.pref_data.PrefData`),
cached on disk and attached to the dataset by index.

:func:`precompute_reference` runs the reference model over the whole dataset in order, in fixed-size
batches, and stores the per-example values in ``<cache_dir>/ref-<key>.npz``. The key is a fingerprint
of everything the values depend on: the reference weights (LoRA adapters excluded: the reference is
the base model), the model config's numerics, the tokenizer (vocabulary, normaliser, specials, chat
template), the examples, the tokenisation config and the batch kind. Writes are atomic (temp file +
``os.replace``), so a killed run never leaves a torn cache; an unreadable or mismatched file is
recomputed. Multi-host: every process computes (the forward is a collective), process 0 writes, and
the hit/miss decision is process 0's, broadcast, so all processes take the same path.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx

from align_jax.data.pref_data import PrefData, combine_digest, digest
from align_jax.sharding import place_batch

log = logging.getLogger(__name__)

CACHE_VERSION = "align_jax.reference_cache.v1"


def default_cache_dir() -> Path:
    """``$ALIGN_JAX_CACHE`` or ``~/.cache/align_jax`` (shared by runs, so a cache is reused)."""
    return Path(os.environ.get("ALIGN_JAX_CACHE") or Path.home() / ".cache" / "align_jax")


# ----------------------------------------------------------------------------- fingerprints


def host_array(x) -> np.ndarray:
    """A (possibly multi-host sharded) array as one host numpy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def params_fingerprint(tree) -> str:
    """Hash of every array leaf (path, dtype, shape, exact bytes) of a pytree / NNX State."""
    h = digest()
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(host_array(x))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def model_fingerprint(model) -> str:
    """Reference identity of a Decoder: its non-LoRA weights + the config fields that change the
    numbers (LoRA/remat knobs excluded: the reference is the base model either way)."""
    from align_jax.models.llama import LoRAParam

    cfg = getattr(model, "cfg", None)
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.replace(cfg, remat=False, lora_rank=0, lora_alpha=0.0, lora_targets=())
    weights = nnx.state(model, nnx.All(nnx.Param, nnx.Not(LoRAParam)))
    return combine_digest({"cfg": repr(cfg), "weights": params_fingerprint(weights)})


# ----------------------------------------------------------------------------- disk cache


@dataclasses.dataclass
class CacheResult:
    arrays: dict[str, np.ndarray]
    path: Path | None
    hit: bool  # True: read from disk, nothing was computed


def _read(path: Path, n: int | None) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files if k != "__meta__"}
    except (OSError, ValueError, EOFError) as e:  # torn/corrupt file from another tool: recompute
        log.warning("cache %s unreadable (%s: %s); recomputing", path, type(e).__name__, e)
        return None
    if n is not None and any(a.shape[:1] != (n,) for a in arrays.values()):
        log.warning("cache %s does not hold %d examples; recomputing", path, n)
        return None
    return arrays


def _write_atomic(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=np.asarray(json.dumps(meta, default=str)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _agree(flag: bool) -> bool:
    """Process 0's decision, on every process."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def cached_arrays(prefix: str, key: str, compute: Callable[[], dict[str, np.ndarray]], *,
                  cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                  num_examples: int | None = None, meta: dict | None = None) -> CacheResult:
    """``<cache_dir>/<prefix>-<key>.npz`` if present and valid, else ``compute()`` and store it."""
    if not use_cache:
        return CacheResult(compute(), None, False)
    path = Path(cache_dir or default_cache_dir()) / f"{prefix}-{key}.npz"
    arrays = _read(path, num_examples) if (jax.process_index() == 0 and path.exists()) else None
    if _agree(arrays is not None):
        if arrays is None:  # non-zero process: read what process 0 found (shared filesystem)
            arrays = _read(path, num_examples)
            if arrays is None:
                raise FileNotFoundError(f"{path}: cache dir must be shared by all processes")
        log.info("reusing %s", path)
        return CacheResult(arrays, path, True)
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    if jax.process_index() == 0:
        _write_atomic(path, arrays, dict(meta or {}, key=key, version=CACHE_VERSION))
        log.info("wrote %s", path)
    return CacheResult(arrays, path, False)


# ----------------------------------------------------------------------------- dataset -> batches


# ----------------------------------------------------------------------------- reference pass


def _batch_shards(mesh) -> int:
    if mesh is None:
        return 1
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))


@functools.lru_cache(maxsize=16)
def _reference_jit(graphdef, kind: str, chunk_size, mesh, compiler_options: tuple):
    """One jitted reference forward per (model structure, kind, ...): the train and eval passes
    share compiled code when their shapes agree."""
    from align_jax.algorithms.preference_step import reference_values
    from align_jax.sharding import use_mesh

    def fn(st, batch):
        with use_mesh(mesh):
            return reference_values(nnx.merge(graphdef, st), batch, kind, chunk_size)

    return jax.jit(fn, compiler_options=dict(compiler_options) or None)


def compute_reference(ref_model, data: PrefData, *, batch_size: int = 8, mesh=None,
                      chunk_size: int | None = None, compiler_options: dict | None = None
                      ) -> dict[str, np.ndarray]:
    """Reference values of every example, in dataset order (no cache). The last batch is padded
    with repeats of its last example (fixed shapes), and the padding rows are dropped."""
    graphdef, state = nnx.split(ref_model)
    jitted = _reference_jit(graphdef, data.kind, chunk_size, mesh,
                            tuple(sorted((compiler_options or {}).items())))
    shards = _batch_shards(mesh)
    bs = -(-max(batch_size, 1) // shards) * shards
    pc, pi = jax.process_count(), jax.process_index()
    if bs % pc:
        raise ValueError(f"reference batch {bs} must divide by the process count {pc}")
    n, parts = len(data), []
    for start in range(0, n, bs):
        idx = np.arange(start, min(start + bs, n))
        real = len(idx)
        idx = np.concatenate([idx, np.full(bs - real, idx[-1])])
        local = idx[pi * (bs // pc):(pi + 1) * (bs // pc)]  # this host's share of the batch
        vals = jitted(state, place_batch(data.batch(local, extras=False), mesh))
        parts.append({k: host_array(v)[:real] for k, v in vals.items()})
    return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in parts[0]}


def precompute_reference(ref_model, data: PrefData, *, batch_size: int = 8, mesh=None,
                         chunk_size: int | None = None, cache_dir: str | os.PathLike | None = None,
                         use_cache: bool = True, compiler_options: dict | None = None
                         ) -> CacheResult:
    """Reference values of ``data`` from the disk cache, or computed once and stored.

    ``ref_model``: the reference module (with LoRA: pass the adapters-off module,
    ``preference_step.lora_reference(model)``). ``CacheResult.arrays`` plug into
    ``data.with_arrays(**arrays)``."""
    key = combine_digest({"version": CACHE_VERSION, "model": model_fingerprint(ref_model),
                    "data": data.fingerprint()})
    return cached_arrays(
        "ref", key,
        lambda: compute_reference(ref_model, data, batch_size=batch_size, mesh=mesh,
                                  chunk_size=chunk_size, compiler_options=compiler_options),
        cache_dir=cache_dir, use_cache=use_cache, num_examples=len(data),
        meta={"kind": data.kind, "num_examples": len(data)})
