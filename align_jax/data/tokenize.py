"""Tokenisation and collation into numpy batches.

Conventions (all batches are dicts of numpy arrays; ids and masks int32, flags bool):
  * Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``),
    or — without a template — used as is (string prompts) / concatenated as
    "User: …\\n\\nAssistant: …\\n\\nAssistant:" (message lists).
  * TRL-style truncation: the prompt keeps its LAST ``max_prompt_len`` tokens (the end, next to
    the response, matters most); the response gets EOS appended and then keeps its FIRST
    ``max_completion_len`` tokens (so a truncated response has no EOS: it did not end).
  * Prompt-only batches are LEFT-padded (the sampler appends generated tokens on the right);
    prompt+response batches are RIGHT-padded concatenations.
  * ``loss_mask`` is 1 exactly at the positions of response tokens in ``input_ids`` (token-
    aligned, not shifted): log p(input_ids[:, t]) comes from logits[:, t-1], so consumers use
    ``loss_mask[:, 1:]`` against ``logits[:, :-1]``.
  * Padded lengths are rounded up to ``pad_multiple`` (bucketing → few distinct jit shapes) or,
    with ``pad_to_max``, fixed to the configured maxima (one shape; required on multi-host,
    where every host's local batch must have the same shape).
Tokenizers are transformers ``PreTrainedTokenizerFast``-like objects: ``__call__`` returning
``input_ids``, ``apply_chat_template``, ``chat_template``, ``eos_token_id``, ``pad_token_id``.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from align_jax.data.schemas import (
    PreferencePair,
    Prompt,
    PromptReference,
    RankedList,
    UnpairedExample,
)
from align_jax.errors import ConfigError


@dataclass(frozen=True)
class TokenizeConfig:
    max_prompt_len: int = 192
    max_completion_len: int = 384
    pad_multiple: int = 32
    pad_to_max: bool = False
    append_eos: bool = True
    use_chat_template: bool | None = None  # None: use it iff the tokenizer has one
    system_prompt: str | None = None  # prepended as a system message for chat templates
    max_responses: int | None = None  # ranked batches: pad K to this (fixed shape) if set


def pow2_bucket(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= n, at least ``minimum``: padded shapes (lengths, batch rows) from
    a few sizes, so a jitted function compiles a few times, not once per input."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def length_bucket(n: int, minimum: int = 16, steps_per_octave: int = 4,
                  min_step: int = 1) -> int:
    """Smallest length >= n on a ladder of ``steps_per_octave`` even steps per power of two
    (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ...), steps at least
    ``min_step`` long: at most 1/steps_per_octave padding where powers of two pad up to 100%
    (a 70-token text ran as 128, 1.8x the work and 3.3x the attention), at the price of a few
    more compiled shapes per octave (min_step bounds their number at short lengths)."""
    n = max(int(n), int(minimum), 1)
    step = max(1, int(min_step),
               (1 << (n - 1).bit_length()) // (2 * max(1, int(steps_per_octave))))
    return round_up(n, step)


def round_up(n: int, multiple: int) -> int:
    """Smallest positive multiple of ``multiple`` that is >= n (never 0: no empty axes)."""
    multiple = max(1, int(multiple))
    return max(multiple, -(-int(n) // multiple) * multiple)


def pad_id_of(tokenizer) -> int:
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def _uses_template(tokenizer, cfg: TokenizeConfig) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if cfg.use_chat_template is None:
        return has
    if cfg.use_chat_template and not has:
        raise ConfigError("use_chat_template=True but the tokenizer has no chat_template")
    return cfg.use_chat_template


def _as_messages(prompt: Prompt, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt is not None and not (msgs and msgs[0]["role"] == "system"):
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def render_prompt(tokenizer, prompt: Prompt, cfg: TokenizeConfig = TokenizeConfig()) -> str:
    """The prompt as the text the model sees right before its reply."""
    if _uses_template(tokenizer, cfg):
        return tokenizer.apply_chat_template(
            _as_messages(prompt, cfg.system_prompt), tokenize=False, add_generation_prompt=True
        )
    if isinstance(prompt, str):
        return prompt if cfg.system_prompt is None else f"{cfg.system_prompt}\n\n{prompt}"
    turns = [f"{m['role'].capitalize()}: {m['content']}"
             for m in _as_messages(prompt, cfg.system_prompt)]
    return "\n\n".join(turns + ["Assistant:"])


def _encode(tokenizer, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    return [list(map(int, x)) for x in ids]


def encode_prompts(tokenizer, prompts: Sequence[Prompt],
                   cfg: TokenizeConfig = TokenizeConfig()) -> list[list[int]]:
    """Rendered + tokenised prompts, left-truncated to ``max_prompt_len``.

    A rendered chat template already contains its special tokens, so none are added; a plain
    prompt gets the tokenizer's own (e.g. BOS for Llama-style tokenizers).
    """
    texts = [render_prompt(tokenizer, p, cfg) for p in prompts]
    ids = _encode(tokenizer, texts, add_special_tokens=not _uses_template(tokenizer, cfg))
    return [x[-cfg.max_prompt_len:] if len(x) > cfg.max_prompt_len else x for x in ids]


def encode_responses(tokenizer, responses: Sequence[str],
                     cfg: TokenizeConfig = TokenizeConfig()) -> list[list[int]]:
    """Tokenised responses + EOS, right-truncated to ``max_completion_len``."""
    ids = _encode(tokenizer, responses, add_special_tokens=False)
    eos = getattr(tokenizer, "eos_token_id", None)
    if cfg.append_eos:
        if eos is None:
            raise ConfigError("append_eos=True but the tokenizer has no eos_token_id")
        ids = [x + [int(eos)] for x in ids]
    return [x[: cfg.max_completion_len] for x in ids]


def _responses(example) -> tuple[str, ...]:
    if isinstance(example, PreferencePair):
        return example.chosen, example.rejected
    if isinstance(example, UnpairedExample):
        return (example.completion,)
    if isinstance(example, RankedList):
        return tuple(example.responses)
    if isinstance(example, PromptReference):
        return (example.reference,)
    raise TypeError(f"no responses in a {type(example).__name__}")


def count_truncated(tokenizer, examples: Sequence, cfg: TokenizeConfig = TokenizeConfig()) -> dict:
    """How many prompts / responses of ``examples`` (any schema) the rule above truncates: one
    untruncated tokenisation pass, for the data report (nothing is dropped silently)."""
    full = dataclasses.replace(cfg, max_prompt_len=sys.maxsize, max_completion_len=sys.maxsize)
    prompts = encode_prompts(tokenizer, [e.prompt for e in examples], full)
    responses = encode_responses(tokenizer, [r for e in examples for r in _responses(e)], full)
    return {"prompts": len(prompts),
            "prompts_truncated": sum(len(x) > cfg.max_prompt_len for x in prompts),
            "max_prompt_len": cfg.max_prompt_len,
            "responses": len(responses),
            "responses_truncated": sum(len(x) > cfg.max_completion_len for x in responses),
            "max_response_len": cfg.max_completion_len}


# ---------------------------------------------------------------- padding primitives
def prompt_length(lengths: Sequence[int], cfg: TokenizeConfig) -> int:
    if cfg.pad_to_max:
        return round_up(cfg.max_prompt_len, cfg.pad_multiple)
    return round_up(max(lengths, default=1), cfg.pad_multiple)


def sequence_length(lengths: Sequence[int], cfg: TokenizeConfig) -> int:
    if cfg.pad_to_max:
        return round_up(cfg.max_prompt_len + cfg.max_completion_len, cfg.pad_multiple)
    return round_up(max(lengths, default=1), cfg.pad_multiple)


def pad_rows(seqs: Sequence[Sequence[int]], length: int, pad_id: int, rows: int | None = None):
    """Right-padded (ids, mask) int32 [rows, length]; rows beyond ``len(seqs)`` are one-token
    dummies (fixed batch shape), whose outputs the caller drops. Shared by the reward-model
    scorer and trainer and the shared-prefix pass (``models.shared_prefix``)."""
    rows = rows or len(seqs)
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], mask[r, :len(s)] = s, 1
    mask[len(seqs):, 0] = 1
    return ids, mask


def collate_prompt_ids(prompt_ids: Sequence[Sequence[int]], pad_id: int,
                       cfg: TokenizeConfig = TokenizeConfig()) -> dict[str, np.ndarray]:
    """Left-pad: ``prompt_ids [B,P]``, ``prompt_mask [B,P]`` (1 on real tokens)."""
    P = prompt_length([len(x) for x in prompt_ids], cfg)
    ids = np.full((len(prompt_ids), P), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompt_ids), P), dtype=np.int32)
    for b, x in enumerate(prompt_ids):
        if len(x):
            ids[b, P - len(x):] = x
            mask[b, P - len(x):] = 1
    return {"prompt_ids": ids, "prompt_mask": mask}


def _fill_row(ids_row, attn_row, loss_row, prompt: Sequence[int], response: Sequence[int]):
    n_p, n_r = len(prompt), len(response)
    ids_row[:n_p] = prompt
    ids_row[n_p:n_p + n_r] = response
    attn_row[:n_p + n_r] = 1
    loss_row[n_p:n_p + n_r] = 1


def collate_sequences(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                      pad_id: int, cfg: TokenizeConfig = TokenizeConfig(),
                      length: int | None = None) -> dict[str, np.ndarray]:
    """Right-padded prompt+response: ``input_ids``, ``attention_mask``, ``loss_mask`` [B,T]."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    T = length or sequence_length([len(p) + len(r) for p, r in zip(prompt_ids, response_ids)], cfg)
    B = len(prompt_ids)
    out = {"input_ids": np.full((B, T), pad_id, dtype=np.int32),
           "attention_mask": np.zeros((B, T), dtype=np.int32),
           "loss_mask": np.zeros((B, T), dtype=np.int32)}
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        _fill_row(out["input_ids"][b], out["attention_mask"][b], out["loss_mask"][b], p, r)
    return out


# ---------------------------------------------------------------- batch builders
def prompt_batch(tokenizer, prompts: Sequence[Prompt],
                 cfg: TokenizeConfig = TokenizeConfig()) -> dict[str, np.ndarray]:
    """For the sampler: ``prompt_ids [B,P]`` / ``prompt_mask [B,P]``, left-padded."""
    return collate_prompt_ids(encode_prompts(tokenizer, prompts, cfg), pad_id_of(tokenizer), cfg)


def sequence_batch(tokenizer, prompts: Sequence[Prompt], responses: Sequence[str],
                   cfg: TokenizeConfig = TokenizeConfig()) -> dict[str, np.ndarray]:
    """One response per prompt (SFT, references, scoring): ``input_ids/attention_mask/
    loss_mask [B,T]``."""
    return collate_sequences(encode_prompts(tokenizer, prompts, cfg),
                             encode_responses(tokenizer, responses, cfg),
                             pad_id_of(tokenizer), cfg)


def reference_batch(tokenizer, items: Sequence[PromptReference],
                    cfg: TokenizeConfig = TokenizeConfig()) -> dict[str, np.ndarray]:
    """Prompt+reference sequences (SFT on references, LD-Align winners) plus the left-padded
    prompts for sampling: keys of :func:`sequence_batch` and :func:`prompt_batch`."""
    prompts = encode_prompts(tokenizer, [x.prompt for x in items], cfg)
    pad = pad_id_of(tokenizer)
    out = collate_sequences(prompts, encode_responses(tokenizer, [x.reference for x in items], cfg),
                            pad, cfg)
    out.update(collate_prompt_ids(prompts, pad, cfg))
    return out


def pair_batch(tokenizer, pairs: Sequence[PreferencePair],
               cfg: TokenizeConfig = TokenizeConfig()) -> dict[str, np.ndarray]:
    """``{chosen,rejected}_{input_ids,attention_mask,loss_mask}`` [B,T], one shared T."""
    prompts = encode_prompts(tokenizer, [p.prompt for p in pairs], cfg)
    chosen = encode_responses(tokenizer, [p.chosen for p in pairs], cfg)
    rejected = encode_responses(tokenizer, [p.rejected for p in pairs], cfg)
    T = sequence_length([len(p) + max(len(c), len(r))
                         for p, c, r in zip(prompts, chosen, rejected)], cfg)
    pad = pad_id_of(tokenizer)
    out = {}
    for name, resp in (("chosen", chosen), ("rejected", rejected)):
        for k, v in collate_sequences(prompts, resp, pad, cfg, length=T).items():
            out[f"{name}_{k}"] = v
    return out


def ranked_batch(tokenizer, items: Sequence[RankedList],
                 cfg: TokenizeConfig = TokenizeConfig()) -> dict[str, Any]:
    """``input_ids/attention_mask/loss_mask [B,K,T]``, ``scores [B,K]`` float32 and
    ``valid_bk [B,K]`` bool. K = ``cfg.max_responses`` or the batch's largest list. Missing
    slots hold the prompt alone (so a model forward stays well-defined) with loss_mask 0 and
    valid_bk False; their score is 0 and must be masked by the loss."""
    K = cfg.max_responses or max(len(x.responses) for x in items)
    if any(len(x.responses) > K for x in items):
        raise ValueError(f"a ranked list has more than max_responses={K} responses")
    prompts = encode_prompts(tokenizer, [x.prompt for x in items], cfg)
    resp = [encode_responses(tokenizer, x.responses, cfg) for x in items]
    T = sequence_length([len(p) + len(r) for p, rs in zip(prompts, resp) for r in rs], cfg)
    B, pad = len(items), pad_id_of(tokenizer)
    out = {"input_ids": np.full((B, K, T), pad, dtype=np.int32),
           "attention_mask": np.zeros((B, K, T), dtype=np.int32),
           "loss_mask": np.zeros((B, K, T), dtype=np.int32),
           "scores": np.zeros((B, K), dtype=np.float32),
           "valid_bk": np.zeros((B, K), dtype=bool)}
    for b, (p, rs, item) in enumerate(zip(prompts, resp, items)):
        for k in range(K):
            r = rs[k] if k < len(rs) else []
            _fill_row(out["input_ids"][b, k], out["attention_mask"][b, k],
                      out["loss_mask"][b, k], p, r)
            if k < len(rs):
                out["scores"][b, k] = item.scores[k]
                out["valid_bk"][b, k] = True
    return out


def unpaired_batch(tokenizer, items: Sequence[UnpairedExample],
                   cfg: TokenizeConfig = TokenizeConfig(), kl: bool = True) -> dict[str, Any]:
    """KTO: ``input_ids/attention_mask/loss_mask [B,T]``, ``labels [B]`` bool (True =
    desirable) and, with ``kl``, ``kl_{input_ids,attention_mask,loss_mask} [B,T]``: prompt i
    with the completion of example (i-1) mod B — TRL's mismatched pairs for the KL reference
    point z0 (a batch of 1 pairs an example with itself)."""
    prompts = encode_prompts(tokenizer, [x.prompt for x in items], cfg)
    comps = encode_responses(tokenizer, [x.completion for x in items], cfg)
    kl_comps = comps[-1:] + comps[:-1]
    lengths = [len(p) + len(c) for p, c in zip(prompts, comps)]
    if kl:
        lengths += [len(p) + len(c) for p, c in zip(prompts, kl_comps)]
    T = sequence_length(lengths, cfg)
    pad = pad_id_of(tokenizer)
    out: dict[str, Any] = collate_sequences(prompts, comps, pad, cfg, length=T)
    out["labels"] = np.array([x.label for x in items], dtype=bool)
    if kl:
        for k, v in collate_sequences(prompts, kl_comps, pad, cfg, length=T).items():
            out[f"kl_{k}"] = v
    return out
