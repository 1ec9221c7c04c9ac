"""Reward models as scorers: ``rm = load_reward_model(path_or_id)``; ``rm(prompts, responses)``
-> float32 scores [N], one per (prompt, response) pair.

Decoder RMs (HF ``Llama/Mistral/Qwen2/…ForSequenceClassification``) run on our JAX decoder with a
score head on the last non-padding token (``models.score_head``); encoder RMs
(``Bert/RobertaForSequenceClassification``) on our encoder (``rewards.classifier``).

Text: the tokenizer's chat template over [user = prompt, assistant = response] when the tokenizer
has one, else ``prompt + response`` with no separator (plus the tokenizer's own special tokens, as
a transformers pipeline adds them). Sequences longer than ``max_length`` keep their LAST tokens:
the score is read at the end, so the end of the response must survive truncation.

Batching: pairs are sorted by token length and cut into batches of ``batch_size`` rows padded to
``data.tokenize.length_bucket`` (<= 25% padding), so a large input compiles a handful of shapes;
scores come back in input order. Right padding with the model's pad id. Rows of the same prompt
(K samples of one question, a pair's chosen and rejected) share the templated prompt's tokens:
that prefix runs once per batch (``models.shared_prefix``) whenever this runs >= 25% fewer
padded token positions than the plain batches (``MIN_SAVING``) — e.g. K = 4 samples per
bundled prompt: 36% fewer; a chosen / rejected pair alone saves 13% and stays plain. With a
``mesh`` the weights are placed by the rules table (as the policy's) and each batch is sharded
on (data, fsdp); ``batch_size`` is rounded up to a multiple of that.
Multi-host runs keep the plain path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Hashable, Sequence

import jax
import numpy as np
from flax import nnx

from align_jax.data.tokenize import length_bucket, pad_rows
from align_jax.models.shared_prefix import MIN_SAVING, pad_prefixes, padded_tokens, split_rows

DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")


def render_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p},
                                               {"role": "assistant", "content": r}], tokenize=False)
                for p, r in zip(prompts, responses)]
    return [p + r for p, r in zip(prompts, responses)]


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str],
                 max_length: int | None = None) -> list[list[int]]:
    """Token ids of each pair's text (see module docstring), keeping the last ``max_length``."""
    texts = render_pairs(tokenizer, prompts, responses)
    if not texts:
        return []
    templated = bool(getattr(tokenizer, "chat_template", None))  # the template holds its specials
    ids = tokenizer(texts, add_special_tokens=not templated)["input_ids"]
    return [list(map(int, x[-max_length:] if max_length else x)) for x in ids]


class DecoderRewardModel:
    """Callable scorer around a :class:`~align_jax.models.score_head.ScoredDecoder`."""

    def __init__(self, model, tokenizer, *, batch_size: int = 16, max_length: int = 1024,
                 mesh=None, progress: bool = True):
        from align_jax.data.tokenize import pad_id_of

        self.model, self.tokenizer, self.mesh, self.progress = model, tokenizer, mesh, progress
        shards = 1 if mesh is None else int(mesh.shape["data"] * mesh.shape["fsdp"])
        self._shards = shards
        self.batch_size = -(-batch_size // shards) * shards
        self.max_length = max_length
        self.scored_rows = 0  # distinct sequences run through the model (tests, benches)
        self.shared_batches = 0  # batches that ran on the shared-prefix path (tests, benches)
        self.pad_id = model.pad_token_id if model.pad_token_id is not None else pad_id_of(tokenizer)
        graphdef, state = nnx.split(model)
        if mesh is not None:  # by the rules table (a no-op for weights loaded onto the mesh)
            from align_jax.sharding import shard_state

            state = shard_state(state, mesh)
        self._state = state

        @jax.jit
        def scores(state, ids, mask, prefix=None):
            from align_jax.sharding import use_mesh

            with use_mesh(mesh):
                return nnx.merge(graphdef, state)(ids, mask, prefix)

        self._scores = scores

    def score_ids(self, seqs: Sequence[Sequence[int]], dedupe: bool = True,
                  groups: Sequence[Hashable] | None = None) -> np.ndarray:
        """float32 [N, num_labels] for token-id sequences (already rendered/truncated). Each
        distinct sequence is scored once (rows are independent: padding is masked), so
        repeated pairs — e.g. the same sample scored for several aspects — cost nothing.
        ``groups`` (e.g. the prompt of each row): rows of one group share their common token
        prefix, run once (``models.shared_prefix``) where that runs fewer padded tokens."""
        from align_jax import sharding as shd

        keys = [tuple(int(t) for t in s) for s in seqs]
        distinct = list(dict.fromkeys(keys))
        if dedupe and len(distinct) < len(keys):
            where = {k: i for i, k in enumerate(distinct)}
            first = {}
            if groups is not None:
                for k, g in zip(keys, groups):
                    first.setdefault(k, g)
            return self.score_ids(distinct, groups=None if groups is None else
                                  [first[k] for k in distinct])[[where[k] for k in keys]]
        self.scored_rows += len(seqs)

        # multi-host: each process scores ITS pairs as its share of one global batch; the hosts
        # agree on the number of batches and each batch's length (past its own pairs a process
        # feeds padding rows)
        multihost = shd.is_multihost(self.mesh)
        rows = self.batch_size // jax.process_count() if multihost else self.batch_size
        order = np.argsort([len(s) for s in seqs], kind="stable")
        split = None if multihost or groups is None else self._shared(seqs, groups, order, rows)
        if split is not None:
            split, order = split
        out = np.zeros((len(seqs), self.model.num_labels), np.float32)
        (n_batches,) = shd.agree(self.mesh, -(-len(seqs) // rows))
        starts = range(0, n_batches * rows, rows)
        bar = None
        if self.progress and len(starts) > 4 and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(seqs), desc="reward model", unit="pair", dynamic_ncols=True)
        for s in starts:
            idx = order[s:s + rows]
            chunk = [(seqs if split is None else split.suffixes)[i] for i in idx]
            longest = max((len(x) for x in chunk), default=1)
            (length,) = shd.agree(self.mesh, length_bucket(longest))
            ids, mask = pad_rows(chunk, length, self.pad_id, rows)
            prefix = None
            if split is not None:
                pids, pmask, rp = pad_prefixes(split, idx, rows, self.pad_id, self._shards)
                rp = np.concatenate([rp, np.zeros(rows - len(idx), np.int32)])
                prefix = shd.place_batch((pids, pmask, rp), self.mesh)
                self.shared_batches += 1
            b = shd.place_batch({"ids": ids, "mask": mask}, self.mesh)
            got = self._scores(self._state, b["ids"], b["mask"], prefix)
            out[idx] = shd.local_rows(got)[:len(idx)]
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def _shared(self, seqs, groups, plain_order, rows):
        """(split, row order) of the shared-prefix path, or None where it would not run fewer
        padded token positions than the plain length-sorted batches by ``MIN_SAVING``."""
        pad = self.model.pad_token_id
        caps = [len(s) - 1 if pad is None else
                max([i for i, t in enumerate(s) if t != pad], default=0) for s in seqs]
        split = split_rows(seqs, groups, caps)
        # groups together, ordered by prefix then continuation length: similar rows per batch
        def key(i):
            p = int(split.row_prefix[i])
            return len(split.prefixes[p]), p, len(split.suffixes[i])

        order = np.array(sorted(range(len(seqs)), key=key), np.int64)
        cut = lambda o: [o[s:s + rows] for s in range(0, len(o), rows)]
        plain = sum(rows * length_bucket(max(len(seqs[i]) for i in b)) for b in cut(plain_order))
        shared = padded_tokens(split, cut(order), rows, self._shards)
        return (split, order) if shared <= (1 - MIN_SAVING) * plain else None

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        s = self.score_ids(encode_pairs(self.tokenizer, prompts, responses, self.max_length),
                           groups=list(prompts))
        return s[:, 0] if s.shape[1] == 1 else s


class EncoderRewardModel:
    """The same call on an encoder sequence classifier (``rewards.classifier``)."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.tokenizer = classifier.tokenizer

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        s = self.classifier(render_pairs(self.tokenizer, prompts, responses))
        return s[:, 0] if s.shape[1] == 1 else s


def load_reward_model(path_or_id: str | os.PathLike, dtype: str = "float32", mesh=None, *,
                      batch_size: int = 16, max_length: int = 1024, progress: bool = True):
    """A HF ``…ForSequenceClassification`` checkpoint (local dir, or hub id from the local HF
    cache: nothing is downloaded) as a scorer ``rm(prompts, responses) -> np.ndarray``: float32
    [N] (or [N, num_labels] for a multi-label head)."""
    from align_jax.models.resolve import resolve_policy

    src = resolve_policy(path_or_id)
    if src.suffix == ".gguf":
        raise ValueError(f"{src}: a GGUF file holds a causal LM, not a reward model")
    hf = json.loads((Path(src) / "config.json").read_text())
    if hf.get("model_type") in DECODER_TYPES:
        from align_jax.models.score_head import load_scored_decoder
        from align_jax.models.tokenizer import load_hf_tokenizer

        arch = (hf.get("architectures") or [""])[0]
        if not arch.endswith("ForSequenceClassification"):
            raise ValueError(f"{src}/config.json: architectures={arch!r} is not a "
                             "…ForSequenceClassification reward model")
        model = load_scored_decoder(src, mesh=mesh, dtype=dtype, param_dtype=dtype)
        tok = load_hf_tokenizer(src, required=True)
        return DecoderRewardModel(model, tok, batch_size=batch_size, max_length=max_length,
                                  mesh=mesh, progress=progress)
    from align_jax.rewards.classifier import load_sequence_classifier

    return EncoderRewardModel(load_sequence_classifier(src, batch_size=batch_size))
