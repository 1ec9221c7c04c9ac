"""Preference datasets as batches, and reference log-probs computed ONCE per dataset, cached on disk.

:class:`PrefData` turns a list of examples (``PreferencePair`` | ``UnpairedExample`` | ``RankedList``)
into the batches the step of ``preference_step`` consumes, given dataset INDICES (so a
:class:`~align_jax.data.loader.DataLoader` over ``range(N)`` resumes exactly), and attaches per-example
arrays (cached reference log-probs ``ref_*``, RPO prompt embeddings ``emb``) by index.

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
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from align_jax.data.schemas import PreferencePair, RankedList, UnpairedExample
from align_jax.data.tokenize import (TokenizeConfig, collate_sequences, encode_prompts,
                                     encode_responses, pad_id_of, pair_batch, ranked_batch,
                                     sequence_length)
from align_jax.sharding import place_batch

log = logging.getLogger(__name__)

CACHE_VERSION = "align_jax.reference_cache.v1"
KINDS = {"pair": PreferencePair, "unpaired": UnpairedExample, "ranked": RankedList}


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


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def params_fingerprint(tree) -> str:
    """Hash of every array leaf (path, dtype, shape, exact bytes) of a pytree / NNX State."""
    h = _digest()
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
    return _combine({"cfg": repr(cfg), "weights": params_fingerprint(weights)})


def tokenizer_fingerprint(tok) -> str:
    h = _digest()
    h.update(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:  # vocabulary, merges, normaliser, pre-tokeniser, post-processor
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    for attr in ("chat_template", "bos_token_id", "eos_token_id", "pad_token_id"):
        h.update(f"|{attr}={getattr(tok, attr, None)!r}".encode())
    return h.hexdigest()


def examples_fingerprint(examples: Sequence) -> str:
    rows = [dataclasses.asdict(e) if dataclasses.is_dataclass(e) else e for e in examples]
    return _combine({"n": len(rows), "rows": json.dumps(rows, sort_keys=True, default=str,
                                                          ensure_ascii=False)})


def _combine(parts: dict) -> str:
    h = _digest()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()


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


def _kl_partners(n: int, seed: int) -> np.ndarray:
    """A fixed random cyclic derangement: example i's KL row pairs prompt i with the completion of
    partner[i] (≠ i when n > 1). Fixed per dataset, like TRL's preprocessing-time shift, so the
    reference values of the mismatched pairs can be cached; a random cycle (not i-1) because
    datasets often list both responses of one prompt next to each other."""
    perm = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 7919]))).permutation(n)
    partner = np.empty(n, np.int64)
    partner[perm] = np.roll(perm, -1)
    return partner


@dataclasses.dataclass
class PrefData:
    """Examples of one kind + how to tokenise them; ``batch(indices)`` builds a numpy batch.

    ``arrays``: per-example extras [N, ...] added to every batch by index (``ref_*``, ``emb``).
    ``kl`` (unpaired): add the mismatched-pair rows ``kl_{input_ids,attention_mask,loss_mask}``.
    ``length``: pad every batch's sequence axis to this T (e.g. :meth:`max_length`: one shape for
    the whole dataset = one compile; right padding never changes a log-prob)."""

    kind: str
    examples: Sequence
    tokenizer: Any
    tok_cfg: TokenizeConfig = TokenizeConfig()
    kl: bool = False
    kl_seed: int = 0
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    length: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        bad = next((e for e in self.examples if not isinstance(e, KINDS[self.kind])), None)
        if bad is not None:
            raise TypeError(f"{self.kind} data needs {KINDS[self.kind].__name__} examples, got "
                            f"{type(bad).__name__}")
        if not self.examples:
            raise ValueError("empty dataset")
        if self.kind == "ranked" and self.tok_cfg.max_responses is None:
            # One K for the whole dataset: fixed shapes, and cached [N, K] reference values.
            k = max(len(e.responses) for e in self.examples)
            self.tok_cfg = dataclasses.replace(self.tok_cfg, max_responses=k)
        self._partner = _kl_partners(len(self.examples), self.kl_seed) if self.kl else None

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def kl_partners(self) -> np.ndarray | None:
        """Unpaired data with ``kl``: index of the example whose completion forms row i's KL pair."""
        return self._partner

    def with_arrays(self, **arrays: np.ndarray) -> "PrefData":
        for k, v in arrays.items():
            if np.shape(v)[:1] != (len(self),):
                raise ValueError(f"array {k!r} has shape {np.shape(v)}, expected [{len(self)}, ...]")
        return dataclasses.replace(self, arrays={**self.arrays, **arrays})

    def max_length(self, chunk: int = 256) -> int:
        """The longest padded T any batch of this dataset gets (tokenises everything once)."""
        plain = dataclasses.replace(self, arrays={}, length=None)
        return max(plain.batch(np.arange(s, min(s + chunk, len(self))))[self._ids_key].shape[-1]
                   for s in range(0, len(self), chunk))

    @property
    def _ids_key(self) -> str:
        return "chosen_input_ids" if self.kind == "pair" else "input_ids"

    def fingerprint(self) -> str:
        return _combine({"kind": self.kind, "examples": examples_fingerprint(self.examples),
                         "tokenizer": tokenizer_fingerprint(self.tokenizer),
                         "tok_cfg": dataclasses.asdict(self.tok_cfg), "kl": self.kl,
                         "kl_seed": self.kl_seed if self.kl else None})

    def batch(self, indices, extras: bool = True) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, np.int64)
        items = [self.examples[int(i)] for i in idx]
        if self.kind == "pair":
            out = pair_batch(self.tokenizer, items, self.tok_cfg)
        elif self.kind == "ranked":
            out = ranked_batch(self.tokenizer, items, self.tok_cfg)
        else:
            out = self._unpaired(items, idx)
        if self.length is not None:
            out = self._pad_length(out, self.length)
        if extras:
            for k, v in self.arrays.items():
                out[k] = np.asarray(v)[idx]
        return out

    def _pad_length(self, out: dict, length: int) -> dict:
        t = out[self._ids_key].shape[-1]
        if t > length:
            raise ValueError(f"a batch has length {t} > the fixed length {length}")
        pad_id = pad_id_of(self.tokenizer)
        for k, v in out.items():
            if k.endswith(("input_ids", "attention_mask", "loss_mask")) and t < length:
                width = [(0, 0)] * (v.ndim - 1) + [(0, length - t)]
                out[k] = np.pad(v, width, constant_values=pad_id if k.endswith("input_ids") else 0)
        return out

    def _unpaired(self, items, idx) -> dict[str, np.ndarray]:
        cfg, tok = self.tok_cfg, self.tokenizer
        prompts = encode_prompts(tok, [x.prompt for x in items], cfg)
        comps = encode_responses(tok, [x.completion for x in items], cfg)
        lengths = [len(p) + len(c) for p, c in zip(prompts, comps)]
        kl_comps = None
        if self.kl:
            partners = [self.examples[int(self._partner[i])].completion for i in idx]
            kl_comps = encode_responses(tok, partners, cfg)
            lengths += [len(p) + len(c) for p, c in zip(prompts, kl_comps)]
        # one T for both row sets: the reference forwards them as one [2B, T] batch
        t = sequence_length(lengths, cfg)
        out = collate_sequences(prompts, comps, pad_id_of(tok), cfg, length=t)
        out["labels"] = np.array([x.label for x in items], dtype=bool)
        if kl_comps is not None:
            for k, v in collate_sequences(prompts, kl_comps, pad_id_of(tok), cfg, length=t).items():
                out[f"kl_{k}"] = v
        return out


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
    key = _combine({"version": CACHE_VERSION, "model": model_fingerprint(ref_model),
                    "data": data.fingerprint()})
    return cached_arrays(
        "ref", key,
        lambda: compute_reference(ref_model, data, batch_size=batch_size, mesh=mesh,
                                  chunk_size=chunk_size, compiler_options=compiler_options),
        cache_dir=cache_dir, use_cache=use_cache, num_examples=len(data),
        meta={"kind": data.kind, "num_examples": len(data)})
