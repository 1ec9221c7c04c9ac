"""Preference datasets as batches: :class:`PrefData` turns a list of examples
(``PreferencePair`` | ``UnpairedExample`` | ``RankedList``) into the numpy batches the preference
steps consume, given dataset INDICES (so a :class:`~align_jax.data.loader.DataLoader` over
``range(N)`` resumes exactly), and attaches per-example arrays (cached reference log-probs
``ref_*``, RPO prompt embeddings ``emb``) by index. Its :meth:`PrefData.fingerprint` keys the
reference cache (``align_jax.algorithms.reference_cache``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import numpy as np

from align_jax.data.schemas import PreferencePair, RankedList, UnpairedExample
from align_jax.data.tokenize import (TokenizeConfig, collate_sequences, encode_prompts,
                                     encode_responses, pad_id_of, pair_batch, ranked_batch,
                                     sequence_length)

KINDS = {"pair": PreferencePair, "unpaired": UnpairedExample, "ranked": RankedList}


def digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def tokenizer_fingerprint(tok) -> str:
    h = digest()
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
    return combine_digest({"n": len(rows), "rows": json.dumps(rows, sort_keys=True, default=str,
                                                          ensure_ascii=False)})


def combine_digest(parts: dict) -> str:
    h = digest()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()


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
        return combine_digest({"kind": self.kind, "examples": examples_fingerprint(self.examples),
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
