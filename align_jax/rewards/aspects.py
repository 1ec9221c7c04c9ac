"""Offline aspect scorers for ALaRM (arXiv 2403.06754), one interface:

    scorer(prompts, responses) -> np.ndarray float32 [N]    (higher = better for that aspect)

Names (``make_aspect_scorer(name, **kw)``):
  * ``readability``  — minus the Flesch–Kincaid grade level (easier text scores higher);
  * ``length``       — words (default) or tokens (``unit="tokens"``, needs ``tokenizer=``);
  * ``repetition``   — distinct-n ratio, unique n-grams / all n-grams (1.0 = nothing repeated);
  * ``similarity``   — any ``rewards.similarity.make_similarity`` scorer against the prompt's
                       reference answer (``scorer=``/``similarity=``, ``references=``);
  * ``reward_model`` — any reward model callable (e.g. ``load_reward_model(...)``), ``rm=``.
``negated(scorer)`` flips a direction (e.g. "shorter is better"); consistency selection
(``rewards.consistency``) then tells which direction agrees with the holistic reward.

Dense, per-sentence rewards: ``sentence_spans`` gives each sentence's character span, so a
per-sentence score can be placed at the token that ends the sentence (``rewards.alarm``:
``char_to_token_positions`` + ``pack_aspect``); ``per_sentence_scores`` does both steps' text half.

Text rules (host-side, deterministic, documented because they change the numbers):
  * words: runs of letters/digits with inner apostrophes ("don't" is one word);
  * sentences: text up to a run of ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by
    whitespace or the end, or up to a line break; a span without a word is not a sentence.
    Abbreviations ("e.g. ") over-split — accepted for an offline proxy;
  * syllables (``count_syllables``): vowel groups (a e i o u, and y after the first letter),
    minus a silent final "e" after a consonant (not "-le" after a consonant: "ta-ble"), minus the
    "e" of a final "-ed" not after t/d ("played") and of a final "-es" after a consonant other
    than s, x, z, c, g and not in "ch"/"sh" ("makes", but "box-es", "hors-es"); at least 1 per
    word with a letter; a number counts 1. Known misses: diphthong splits ("qui-et" → 1).
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from align_jax.errors import ConfigError, DataError
from align_jax.rewards.similarity import make_similarity, strip_for_scoring

AspectScorer = Callable[[Sequence[Any], Sequence[str]], np.ndarray]

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z0-9]+)*")
_SENT_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|\n")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")


# ---------------------------------------------------------------- text primitives
def words(text: str) -> list[str]:
    return _WORD.findall(text)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences (module docstring), end exclusive and at
    the sentence's last non-space character."""
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        seg = text[s:e]
        if not _WORD.search(seg):
            continue
        s += len(seg) - len(seg.lstrip())
        e -= len(seg) - len(seg.rstrip())
        out.append((s, e))
    return out


def count_syllables(word: str) -> int:
    """Heuristic English syllable count (rules in the module docstring)."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 1 if any(ch.isdigit() for ch in word) else 0
    # y at the start is a consonant ("yes"); elsewhere a vowel ("happy", "rhythm")
    groups = len(_VOWEL_GROUP.findall(w[0].replace("y", "b") + w[1:]))
    consonant = lambda ch: ch not in "aeiouy"  # noqa: E731
    if groups > 1:
        if w.endswith("e") and consonant(w[-2]) and not (
                w.endswith("le") and len(w) > 2 and consonant(w[-3])):
            groups -= 1  # silent e: "make", "outside"
        elif w.endswith("ed") and len(w) > 2 and consonant(w[-3]) and w[-3] not in "td":
            groups -= 1  # "played", "jumped" (but "want-ed")
        elif (w.endswith("es") and len(w) > 2 and consonant(w[-3]) and w[-3] not in "sxzcg"
              and not w.endswith(("ches", "shes"))):
            groups -= 1  # "makes" (but "box-es", "pla-ces", "chan-ges")
    return max(1, groups)


def flesch_kincaid_grade(text: str) -> float:
    """0.39·words/sentences + 11.8·syllables/words − 15.59 (Kincaid et al. 1975). Text without
    words scores 0.0; text with words but no sentence end is one sentence."""
    ws = words(text)
    if not ws:
        return 0.0
    n_sent = max(1, len(sentence_spans(text)))
    syl = sum(count_syllables(w) for w in ws)
    return 0.39 * len(ws) / n_sent + 11.8 * syl / len(ws) - 15.59


def distinct_n(text: str, n: int = 2) -> float:
    """Unique / total word n-grams (lower-cased). Fewer than n words: 1.0 (nothing can repeat;
    ALaRM's ≤ 2-token rule, not this scorer, handles degenerate short answers)."""
    ws = [w.lower() for w in words(text)]
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


# ---------------------------------------------------------------- scorers
def _check(prompts, responses):
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts vs {len(responses)} responses")


def _text_scorer(fn: Callable[[str], float], special_tokens: Iterable[str] = ()) -> AspectScorer:
    specials = tuple(special_tokens)

    def scorer(prompts, responses):
        _check(prompts, responses)
        return np.array([fn(strip_for_scoring(r, specials)) for r in responses], np.float32)
    return scorer


def readability_scorer(special_tokens: Iterable[str] = ()) -> AspectScorer:
    """−Flesch–Kincaid grade: higher = easier to read."""
    return _text_scorer(lambda t: -flesch_kincaid_grade(t), special_tokens)


def repetition_scorer(n: int = 2, special_tokens: Iterable[str] = ()) -> AspectScorer:
    """distinct-n: higher = less repetitive."""
    if n < 1:
        raise ConfigError(f"n={n}: distinct-n needs n ≥ 1")
    return _text_scorer(lambda t: distinct_n(t, n), special_tokens)


def length_scorer(unit: str = "words", tokenizer=None,
                  special_tokens: Iterable[str] = ()) -> AspectScorer:
    """Response length in words, or in tokens of ``tokenizer`` (no special tokens added)."""
    if unit == "words":
        return _text_scorer(lambda t: float(len(words(t))), special_tokens)
    if unit == "tokens":
        if tokenizer is None:
            raise ConfigError("length unit='tokens' needs tokenizer=")
        return _text_scorer(lambda t: float(len(tokenizer.encode(t, add_special_tokens=False))),
                            special_tokens)
    raise ConfigError(f"unit={unit!r}: expected 'words' or 'tokens'")


def prompt_key(prompt: Any) -> str:
    """Hashable key of a prompt: the string itself, or a chat message list as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def references_from_records(records: Iterable[Any], prompt_field: str = "prompt",
                            reference_field: str = "reference") -> dict[str, str]:
    """{prompt key: reference} from dict records or ``data.schemas.PromptReference`` items."""
    out = {}
    for i, r in enumerate(records):
        get = r.get if isinstance(r, Mapping) else lambda k, _r=r: getattr(_r, k, None)
        p, ref = get(prompt_field), get(reference_field)
        if p is None or ref is None:
            raise DataError(f"record {i} lacks {prompt_field!r} or {reference_field!r}")
        out[prompt_key(p)] = ref
    return out


def similarity_scorer(references: Mapping[str, str], scorer=None, similarity: str = "bertscore_f1",
                      **similarity_kw) -> AspectScorer:
    """S(response, reference of its prompt) with a ``make_similarity`` scorer (built from
    ``similarity``/``similarity_kw`` unless ``scorer`` is given, so an encoder can be shared)."""
    sim = scorer if scorer is not None else make_similarity(similarity, **similarity_kw)

    def score(prompts, responses):
        _check(prompts, responses)
        refs = []
        for p in prompts:
            k = prompt_key(p)
            if k not in references:
                raise DataError(f"no reference answer for prompt {k[:80]!r}")
            refs.append(references[k])
        return np.asarray(sim(list(responses), refs), np.float32)
    return score


def reward_model_scorer(rm: Callable) -> AspectScorer:
    """Any ``rm(prompts, responses) -> scores`` (e.g. ``load_reward_model``'s) as an aspect."""
    def score(prompts, responses):
        _check(prompts, responses)
        out = np.asarray(rm(list(prompts), list(responses)), np.float32).reshape(-1)
        if out.shape[0] != len(responses):
            raise ValueError(f"reward model returned {out.shape[0]} scores for {len(responses)}")
        return out
    return score


def negated(scorer: AspectScorer) -> AspectScorer:
    """The same aspect with the opposite direction (−score)."""
    return lambda prompts, responses: -np.asarray(scorer(prompts, responses), np.float32)


ASPECT_SCORERS: dict[str, Callable[..., AspectScorer]] = {
    "readability": readability_scorer,
    "length": length_scorer,
    "repetition": repetition_scorer,
    "similarity": similarity_scorer,
    "reward_model": lambda rm, **kw: reward_model_scorer(rm),
}


def make_aspect_scorer(name: str, **kw) -> AspectScorer:
    """Aspect scorer by name (module docstring); ``kw`` go to the factory."""
    if name not in ASPECT_SCORERS:
        raise ConfigError(f"aspect={name!r}: unknown aspect scorer; valid names: "
                          f"{sorted(ASPECT_SCORERS)}")
    return ASPECT_SCORERS[name](**kw)


# ---------------------------------------------------------------- dense (per-sentence) scores
def per_sentence_scores(text: str, fn: Callable[[str], float]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(scores [S], sentence end offsets [S]) of ``fn`` on each sentence of ``text``; feed the
    offsets to ``alarm.char_to_token_positions`` with the text's token ends."""
    spans = sentence_spans(text)
    return (np.array([fn(text[s:e]) for s, e in spans], np.float32),
            np.array([e for _, e in spans], np.int64))
