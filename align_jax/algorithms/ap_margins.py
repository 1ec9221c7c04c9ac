"""The two margins of alignment potential (ALGORITHMS.md §4): the implicit margin of the model
about to be trained, as one jitted, sharded pass over the whole dataset cached on disk, and the
explicit margin from a spec (``dataset`` | ``rm:PATH`` | ``sim:NAME`` | ``auto``).

Implicit margin. Pairs are tokenised by ``data.tokenize.pair_batch`` — the function preference
training batches pairs with — under the SAME ``TokenizeConfig`` (chat template, TRL truncation,
EOS), so avg_lp is the per-token mean over exactly the response tokens training scores. The
pass is length-bucketed: pairs are sorted by token length and cut into batches of one fixed
size (rounded up to the data-parallel shards; the last batch is filled with repeats that are
dropped), each padded to its own ``data.tokenize.length_bucket`` (<= 25% padding) — few
shapes, few compiles, no long padding on short pairs. Each pair's prompt runs ONCE where that
saves >= 25% of the padded token positions (``models.shared_prefix.split_pair_batch``: chosen
and rejected continue the prompt's keys / values; on the bundled pairs the prompt is ~3/4 of a
row). Neither right padding nor the shared prompt changes a log-prob (beyond float rounding), so
the values do not depend on the batching; the cache key therefore leaves batch size / mesh out
and holds the model weights + config, the tokenizer (vocab, template, specials), the pairs and
the tokenise config. The cache is ``reference_cache.cached_arrays`` (atomic writes, multi-host
agreement).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.algorithms.preference_step import Fwd, pair_forward
from align_jax.algorithms.reference_cache import (CacheResult, cached_arrays, host_array,
                                                  model_fingerprint)
from align_jax.data import selection
from align_jax.data.pref_data import examples_fingerprint, tokenizer_fingerprint
from align_jax.data.schemas import PreferencePair
from align_jax.data.tokenize import (TokenizeConfig, encode_prompts, encode_responses,
                                     length_bucket, pad_id_of, pair_batch)
from align_jax.errors import ConfigError
from align_jax.models.shared_prefix import MIN_SAVING, continuation, split_pair_batch
from align_jax.sharding import place_batch, use_mesh

CACHE_VERSION = "align_jax.ap_implicit.v1"
AUTO_SIMILARITY = "embedding_cosine"  # explicit=auto on data without scores (bundled MiniLM)


@functools.lru_cache(maxsize=8)
def _avg_lp_jit(graphdef, fwd: Fwd, mesh):
    """avg log-prob of chosen and rejected rows of a pair batch, in ONE [2B, T] forward — the
    preference step's own ``pair_forward`` (with ``fwd.completion_len`` the LM head runs on the
    response positions only, as in training; prompt positions are never scored). A batch split
    by ``models.shared_prefix.split_pair_batch`` runs each pair's prompt once [B, Lp], then the
    [2B, Ls] continuations of chosen and rejected against its keys and values."""

    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        with use_mesh(mesh):
            if "prefix_input_ids" in batch:  # prompts cut out: run once per pair, both continue
                b = batch["prefix_input_ids"].shape[0]
                rows = jnp.concatenate([jnp.arange(b), jnp.arange(b)])
                model = continuation(model, batch["prefix_input_ids"],
                                     batch["prefix_attention_mask"], rows)
            f = pair_forward(model, batch, fwd)
        return (f["chosen_logps"] / jnp.maximum(f["chosen_len"], 1.0),
                f["rejected_logps"] / jnp.maximum(f["rejected_len"], 1.0))

    return jax.jit(fn)


def _shards(mesh) -> int:
    return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Dataset indices sorted by length (stable) and cut into batches of exactly
    ``batch_size``; the last one is filled with repeats of its last index."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out.append(np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])]))
    return out


def crop_padding(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Right padding cut to ``length_bucket`` of the longest row: the training batch rounds up
    to ``pad_multiple`` (32: a 70-token pair runs as 96), the ladder to at most 25% more (80).
    Masked tail columns change no log-prob, so the values are those of the uncropped batch."""
    T = batch["chosen_input_ids"].shape[1]
    longest = max(int(batch[f"{s}_attention_mask"].sum(-1).max()) for s in ("chosen", "rejected"))
    keep = min(T, length_bucket(longest))
    return {k: v[:, :keep] if v.ndim == 2 and v.shape[1] == T else v for k, v in batch.items()}


def pair_batches(tokenizer, pairs: Sequence[PreferencePair], tok_cfg: TokenizeConfig,
                 batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(dataset indices, padded pair batch) of the pass: length-sorted batches of exactly
    ``batch_size`` (:func:`length_buckets`), tokenised by ``pair_batch`` under ``tok_cfg`` and
    cropped (:func:`crop_padding`). The whole global batch: every host gets the same T."""
    prompts = encode_prompts(tokenizer, [p.prompt for p in pairs], tok_cfg)
    longest = [max(len(c), len(r)) for c, r in zip(
        encode_responses(tokenizer, [p.chosen for p in pairs], tok_cfg),
        encode_responses(tokenizer, [p.rejected for p in pairs], tok_cfg))]
    for idx in length_buckets([len(p) + n for p, n in zip(prompts, longest)], batch_size):
        yield idx, crop_padding(pair_batch(tokenizer, [pairs[int(i)] for i in idx], tok_cfg))


def compute_avg_logps(model, tokenizer, pairs: Sequence[PreferencePair],
                      tok_cfg: TokenizeConfig = TokenizeConfig(), *, batch_size: int = 8,
                      mesh=None, chunk_size: int | None = None, progress: bool = True,
                      share_prompts: float | None = MIN_SAVING) -> dict[str, np.ndarray]:
    """``avg_lp_chosen`` / ``avg_lp_rejected`` [N] float32 in dataset order (no cache).
    ``share_prompts``: the least fraction of padded token positions a batch must save to run
    its prompts once (``split_pair_batch``'s ``min_saving``); None = always the plain pass."""
    if not pairs:
        raise ConfigError("the implicit margin needs at least one pair")
    shards, pc, pi = _shards(mesh), jax.process_count(), jax.process_index()
    bs = -(-max(batch_size, 1) // shards) * shards
    if bs % pc:
        raise ConfigError(f"implicit-margin batch {bs} must divide by the process count {pc}")
    graphdef, state = nnx.split(model)
    fn = _avg_lp_jit(graphdef, Fwd(chunk_size, tok_cfg.max_completion_len), mesh)
    bar = None
    if progress and pi == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="implicit margin", unit="pair", dynamic_ncols=True)
    c = np.zeros(len(pairs), np.float32)
    r = np.zeros(len(pairs), np.float32)
    pad_id = pad_id_of(tokenizer)
    for idx, batch in pair_batches(tokenizer, pairs, tok_cfg, bs):
        # every host tokenised the whole global batch (one T); each places its own share
        if share_prompts is not None:
            batch = split_pair_batch(batch, share_prompts, pad_id) or batch
        share = slice(pi * (bs // pc), (pi + 1) * (bs // pc))
        lc, lr = fn(state, place_batch({k: v[share] for k, v in batch.items()}, mesh))
        c[idx], r[idx] = host_array(lc), host_array(lr)  # repeats write the same value again
        if bar is not None:
            bar.update(len(np.unique(idx)))
    if bar is not None:
        bar.close()
    return {"avg_lp_chosen": c, "avg_lp_rejected": r}


def implicit_cache_key(model, tokenizer, pairs, tok_cfg: TokenizeConfig) -> str:
    parts = {"version": CACHE_VERSION, "model": model_fingerprint(model),
             "tokenizer": tokenizer_fingerprint(tokenizer), "pairs": examples_fingerprint(pairs),
             "tok_cfg": dataclasses.asdict(tok_cfg)}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                           digest_size=16).hexdigest()


def implicit_margins(model, tokenizer, pairs: Sequence[PreferencePair],
                     tok_cfg: TokenizeConfig = TokenizeConfig(), *, batch_size: int = 8,
                     mesh=None, chunk_size: int | None = None, cache_dir=None,
                     use_cache: bool = True, progress: bool = True) -> CacheResult:
    """Avg log-probs of every pair from ``<cache_dir>/ap-implicit-<key>.npz`` or computed once;
    ``arrays["margin_implicit"]`` = |avg_lp_chosen − avg_lp_rejected| [N]."""
    res = cached_arrays(
        "ap-implicit", implicit_cache_key(model, tokenizer, pairs, tok_cfg),
        lambda: compute_avg_logps(model, tokenizer, pairs, tok_cfg, batch_size=batch_size,
                                  mesh=mesh, chunk_size=chunk_size, progress=progress),
        cache_dir=cache_dir, use_cache=use_cache, num_examples=len(pairs),
        meta={"num_examples": len(pairs)})
    a = res.arrays
    a["margin_implicit"] = np.abs(a["avg_lp_chosen"] - a["avg_lp_rejected"])
    return res


# ----------------------------------------------------------------------------- explicit margin


def resolve_explicit(spec: str, records) -> str:
    """``auto``: the dataset's own scores when every record has them, else a similarity scorer."""
    if spec != "auto":
        return spec
    return "dataset" if selection.has_dataset_scores(records) else f"sim:{AUTO_SIMILARITY}"


def explicit_margins(spec: str, pairs: Sequence[PreferencePair], records, *,
                     reference_field: str = "reference", mesh=None) -> np.ndarray:
    """m_ex [N] float64 from ``dataset`` (score_chosen − score_rejected), ``rm:PATH`` (a reward
    model's scores of both responses) or ``sim:NAME`` (any registered similarity scorer of each
    response against ``reference_field``)."""
    if spec == "dataset":
        return selection.dataset_margins(records)
    kind, _, arg = spec.partition(":")
    if kind == "rm" and arg:
        from align_jax.data.schemas import prompt_text
        from align_jax.rewards.reward_model import load_reward_model

        rm = load_reward_model(arg, mesh=mesh)
        # the reward model renders (prompt, response) itself; it takes the prompt as text
        prompts = [prompt_text(p.prompt) for p in pairs]
        return selection.pair_score_margins(lambda cand, pr: rm(pr, cand), pairs, prompts)
    if kind == "sim" and arg:
        from align_jax.rewards.similarity import make_similarity

        refs = selection.references(pairs, records, reference_field)
        return selection.pair_score_margins(make_similarity(arg), pairs, refs)
    raise ConfigError(f"explicit={spec!r}: expected auto, dataset, rm:PATH or sim:NAME")
