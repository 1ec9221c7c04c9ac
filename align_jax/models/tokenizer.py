"""Tokenizers for the policy: rebuilt from GGUF metadata, or read from a HF checkpoint dir.

Both return a `transformers.PreTrainedTokenizerFast` so the rest of the code base has one API
(`apply_chat_template`, `decode`, `eos_token_id`, `pad_token_id`, `save_pretrained`). A missing
pad token defaults to EOS: batches are padded and masked, so the pad id only has to be a valid
id, and EOS is the one every causal LM has.

GGUF stores the vocabulary, merges and special ids as llama.cpp metadata (`tokenizer.ggml.*`):
* `model == "gpt2"`: byte-level BPE (SmolLM2, Llama 3, Qwen2). The split regex in front of the
  BPE depends on `tokenizer.ggml.pre` (llama.cpp's pre-tokenizer name).
* `model == "llama"`: SentencePiece-style BPE over "▁"-spelled words with byte fallback
  (Llama 1/2, Mistral v0.1). Merges are derived from the token scores when the file has none.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# llama.cpp token types (gguf.TokenType)
_CONTROL, _USER_DEFINED = 3, 4

# Split regexes that differ from GPT-2's (which ByteLevel(use_regex=True) applies itself).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
               "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
# pre-tokenizers that are GPT-2's regex, optionally after splitting digits one by one
_GPT2_PRES = {"default": False, "gpt2": False, "smollm": True, "starcoder": True}


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    # printable latin-1 bytes map to themselves; the rest to 256+ code points, in byte order
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def _byte_level(meta: dict[str, Any], tokens: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    spell = _gpt2_bytes_to_unicode()
    alphabet = set(spell.values())
    # control tokens are usually stored raw (e.g. "<|im_start|>" is already all-printable);
    # anything outside the byte alphabet must be respelled or BPE could never produce it
    vocab = {(t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))): i
             for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre in _PRE_SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        if pre not in _GPT2_PRES:
            log.warning("GGUF tokenizer.ggml.pre=%r unknown; using GPT-2's split regex", pre)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                      byte_level])
                             if _GPT2_PRES.get(pre) else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _sentencepiece_bpe(meta: dict[str, Any], tokens: list[str], unk: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    if not merges:
        merges = _merges_from_scores(tokens, meta.get("tokenizer.ggml.scores"))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    # spaces are spelled "▁"; a word-initial "▁" is added once, at the start of the text (HF's
    # non-legacy Llama behaviour), when the file asks for a space prefix
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", split=False,
                                                 prepend_scheme="first" if prefix else "never")
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _merges_from_scores(tokens: list[str], scores) -> list[tuple[str, str]]:
    """SentencePiece BPE keeps no merge list: a token's score is its merge priority, and every
    split of it into two vocabulary tokens is a merge that produces it."""
    if scores is None:
        raise ValueError("GGUF sentencepiece tokenizer has neither merges nor scores")
    vocab = {t: i for i, t in enumerate(tokens)}
    cand = []
    for t, i in vocab.items():
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab:
                cand.append((-float(scores[i]), vocab[a], vocab[b], a, b))
    cand.sort()
    return [(a, b) for *_, a, b in cand]


def tokenizer_from_gguf_metadata(meta: dict[str, Any], source: str = "GGUF"):
    """PreTrainedTokenizerFast from `tokenizer.ggml.*` metadata (see module docstring)."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"{source}: no 'tokenizer.ggml.tokens' metadata")

    def tok_of(field):
        i = meta.get(f"tokenizer.ggml.{field}")
        return None if i is None or not 0 <= int(i) < len(tokens) else tokens[int(i)]

    bos, eos, unk = tok_of("bos_token_id"), tok_of("eos_token_id"), tok_of("unknown_token_id")
    pad = tok_of("padding_token_id") or eos
    if kind == "gpt2":
        backend = _byte_level(meta, tokens)
    elif kind == "llama":
        backend = _sentencepiece_bpe(meta, tokens, unk)
    else:
        raise ValueError(f"{source}: GGUF field 'tokenizer.ggml.model'={kind!r} is not supported "
                         "(supported: gpt2 byte-level BPE, llama sentencepiece BPE)")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    # control tokens must match whole in raw text (chat markers) and be skippable on decode
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types) if ty == _CONTROL]
    backend.add_special_tokens(specials)
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    add_eos = meta.get("tokenizer.ggml.add_eos_token", False)
    if (add_bos and bos) or (add_eos and eos):
        single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + \
                 ([f"{eos}:0"] if add_eos and eos else [])
        pair = single + ["$B:1"] + ([f"{eos}:1"] if add_eos and eos else [])
        special = [(t, tokens.index(t)) for t in {bos if add_bos else None,
                                                   eos if add_eos else None} if t]
        post = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                             special_tokens=special)
        backend.post_processor = (processors.Sequence([backend.post_processor, post])
                                  if backend.post_processor is not None else post)
    kw = dict(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk,
              pad_token=pad, clean_up_tokenization_spaces=False)
    template = meta.get("tokenizer.chat_template")
    if template:
        kw["chat_template"] = template
    tok = PreTrainedTokenizerFast(**kw)
    return _default_pad(tok)


def load_hf_tokenizer(path: str | os.PathLike, *, required: bool = False):
    """`AutoTokenizer.from_pretrained(dir)` offline; None (with a warning) when the dir holds no
    tokenizer files, unless `required`."""
    from transformers import AutoTokenizer

    path = Path(path)
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / n).exists() for n in names):
        msg = f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)"
        if required:
            raise FileNotFoundError(msg)
        log.warning("%s; returning tokenizer=None", msg)
        return None
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return _default_pad(tok)


def _default_pad(tok):
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
