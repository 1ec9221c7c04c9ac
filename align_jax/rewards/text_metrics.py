"""Host-side n-gram similarity metrics: ROUGE-L F, sentence BLEU, METEOR (pure Python).

These run on the host (text in, float out); they are cheap next to sampling and need no
accelerator. All are sentence-level, one candidate against one reference, in [0, 1].

Tokenisation (documented because scores depend on it):
  * ROUGE-L: lowercased runs of letters/digits (like `rouge-score`'s default tokenizer, but
    keeping non-ASCII letters instead of dropping them); punctuation is ignored.
  * BLEU / METEOR: lowercased words (`\\w+`) plus each punctuation character as its own token.
"""
from __future__ import annotations

import math
import re
from collections import Counter

_ALNUM = re.compile(r"[^\W_]+")
_WORD_PUNCT = re.compile(r"\w+|[^\w\s]")


def rouge_tokens(text: str) -> list[str]:
    return _ALNUM.findall(text.lower())


def word_tokens(text: str) -> list[str]:
    return _WORD_PUNCT.findall(text.lower())


# ---------------------------------------------------------------------------------- ROUGE-L

def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison–Dix / Hyyrö): one
    big-int add per token of `b` instead of an O(|a|·|b|) Python DP, so 400-token responses
    cost microseconds, not tens of milliseconds."""
    if not a or not b:
        return 0
    match: dict[str, int] = {}
    for i, tok in enumerate(a):
        match[tok] = match.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # zero bits of v mark positions of a used by the current LCS
    for tok in b:
        u = v & match.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: P = LCS/|cand|, R = LCS/|ref|, F = 2PR/(P+R) (0 if either is empty)."""
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


# ------------------------------------------------------------------------------------ BLEU

def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def sentence_bleu(candidate: str, reference: str, max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU with uniform weights over 1..max_n-grams and brevity penalty.

    Smoothing (NLTK `SmoothingFunction().method1` semantics): an order with zero clipped
    matches gets precision epsilon / max(1, #candidate n-grams) instead of 0, so one missing
    4-gram does not zero the score of a short answer. As in NLTK, no unigram match at all
    → 0, and orders longer than the candidate count as zero-match orders (a 2-word exact
    match therefore scores (1·1·0.1·0.1)^(1/4) ≈ 0.32, not 1 — BLEU is a poor reward for
    very short answers).
      p_n = Σ min(count_cand(g), count_ref(g)) / max(1, Σ count_cand(g))
      BP  = 1 if |c| > |r| else exp(1 − |r|/|c|)
      BLEU = BP · exp(Σ_n log p_n / max_n)
    """
    c, r = word_tokens(candidate), word_tokens(reference)
    if not c:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        cand, ref = _ngrams(c, n), _ngrams(r, n)
        hits = sum(min(k, ref[g]) for g, k in cand.items())
        total = max(1, sum(cand.values()))
        if hits == 0:
            if n == 1:
                return 0.0
            log_p += math.log(epsilon / total)
        else:
            log_p += math.log(hits / total)
    bp = 1.0 if len(c) > len(r) else math.exp(1.0 - len(r) / len(c))
    return bp * math.exp(log_p / max_n)


# ---------------------------------------------------------------------------- Porter stem

_VOWELS = frozenset("aeiou")


def _is_cons(w: str, i: int) -> bool:
    ch = w[i]
    if ch in _VOWELS:
        return False
    if ch == "y":  # y is a consonant at the start or after a vowel
        return i == 0 or not _is_cons(w, i - 1)
    return True


def _measure(stem: str) -> int:
    """m in [C](VC)^m[V]: number of vowel→consonant transitions."""
    m, prev_vowel = 0, False
    for i in range(len(stem)):
        vowel = not _is_cons(stem, i)
        if prev_vowel and not vowel:
            m += 1
        prev_vowel = vowel
    return m


def _has_vowel(stem: str) -> bool:
    return any(not _is_cons(stem, i) for i in range(len(stem)))


def _double_cons(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _is_cons(w, len(w) - 1)


def _cvc(w: str) -> bool:
    n = len(w)
    return (n >= 3 and _is_cons(w, n - 3) and not _is_cons(w, n - 2) and _is_cons(w, n - 1)
            and w[-1] not in "wxy")


_STEP2 = (("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"),
          ("izer", "ize"), ("abli", "able"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
          ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"),
          ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"),
          ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"))
_STEP3 = (("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
          ("ful", ""), ("ness", ""))
_STEP4 = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
          "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize")


def _replace_longest(w: str, rules, min_m: int) -> str:
    # Porter: only the LONGEST matching suffix is considered; if its condition fails, no
    # shorter suffix is tried.
    best = max((r for r in rules if w.endswith(r[0])), key=lambda r: len(r[0]), default=None)
    if best is not None and _measure(w[:len(w) - len(best[0])]) > min_m:
        return w[:len(w) - len(best[0])] + best[1]
    return w


def porter_stem(word: str) -> str:
    """The original Porter (1980) stemmer, steps 1a–5b. NLTK's default PorterStemmer adds
    extensions, so a few words stem differently from NLTK (e.g. 'generously')."""
    w = word.lower()
    if len(w) <= 2:
        return w
    # 1a
    if w.endswith("sses") or w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    # 1b
    if w.endswith("eed"):
        if _measure(w[:-3]) > 0:
            w = w[:-1]
    else:
        for suf in ("ed", "ing"):
            if w.endswith(suf) and _has_vowel(w[:-len(suf)]):
                w = w[:-len(suf)]
                if w.endswith(("at", "bl", "iz")):
                    w += "e"
                elif _double_cons(w) and w[-1] not in "lsz":
                    w = w[:-1]
                elif _measure(w) == 1 and _cvc(w):
                    w += "e"
                break
    # 1c
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    w = _replace_longest(w, _STEP2, 0)
    w = _replace_longest(w, _STEP3, 0)
    # 4 (m > 1; "ion" also needs the stem to end in s or t)
    suf = max((s for s in _STEP4 if w.endswith(s)), key=len, default=None)
    if suf is not None:
        stem = w[:-len(suf)]
        if _measure(stem) > 1 and (suf != "ion" or stem.endswith(("s", "t"))):
            w = stem
    # 5a
    if w.endswith("e"):
        m = _measure(w[:-1])
        if m > 1 or (m == 1 and not _cvc(w[:-1])):
            w = w[:-1]
    # 5b
    if _measure(w) > 1 and _double_cons(w) and w.endswith("l"):
        w = w[:-1]
    return w


# ---------------------------------------------------------------------------------- METEOR

def _align_stage(hyp: list[tuple[int, str]], ref: list[tuple[int, str]], key):
    """Greedy one-to-one matching by key(word), scanning both lists from the END (the NLTK
    order, so the same pairs are chosen when a word repeats). Mutates hyp/ref (removes the
    matched words) and returns the (hyp_pos, ref_pos) pairs."""
    pairs = []
    for i in range(len(hyp) - 1, -1, -1):
        hk = key(hyp[i][1])
        for j in range(len(ref) - 1, -1, -1):
            if key(ref[j][1]) == hk:
                pairs.append((hyp[i][0], ref[j][0]))
                del hyp[i], ref[j]
                break
    return pairs


def _count_chunks(pairs: list[tuple[int, int]]) -> int:
    """Chunks = maximal runs of matches adjacent in BOTH sentences (pairs sorted by hyp)."""
    chunks = 1
    for (h0, r0), (h1, r1) in zip(pairs, pairs[1:]):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return chunks


def meteor(candidate: str, reference: str, alpha: float = 0.9, beta: float = 3.0,
           gamma: float = 0.5) -> float:
    """METEOR (Lavie & Agarwal 2007 parametrisation, NLTK defaults α=0.9, β=3, γ=0.5).

    Matching stages: exact (lowercased) then Porter stem. NO WordNet synonym stage: it needs
    the WordNet corpus download, which this project cannot do offline, so scores are ≤ NLTK's
    `meteor_score` whenever synonyms would have matched.
      P = m/|c|, R = m/|r|, Fmean = P·R / (α·P + (1−α)·R)
      penalty = γ · (chunks/m)^β,  METEOR = Fmean · (1 − penalty)   (0 if m = 0)
    """
    hyp = list(enumerate(word_tokens(candidate)))
    ref = list(enumerate(word_tokens(reference)))
    n_hyp, n_ref = len(hyp), len(ref)
    pairs = _align_stage(hyp, ref, lambda w: w)
    pairs += _align_stage(hyp, ref, porter_stem)
    m = len(pairs)
    if m == 0:
        return 0.0
    pairs.sort()
    p, r = m / n_hyp, m / n_ref
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    penalty = gamma * (_count_chunks(pairs) / m) ** beta
    return fmean * (1 - penalty)
