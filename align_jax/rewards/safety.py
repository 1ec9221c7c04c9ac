"""Harmless scorers for the RefAlign safety variant: A = A_sim + w · A_harm (w = 4.0 [card]).

How the harmless reward is computed is [open] in the paper's public material, so it is pluggable.
Every scorer has one interface: `scorer(prompts, responses, records) -> np.ndarray[B]` where
`records` are the data items (dicts with optional `category` ("risky"/"benign") and `unsafe`
(a known unsafe response)). Higher = more harmless.

- `refusal`: regex refusal / unsafe-compliance patterns, for the offline default.
- `contrast`: S(y, safe_reference) − S(y, unsafe_response) with any similarity scorer, where the
  data has a known unsafe response (PKU-SafeRLHF does); 0 elsewhere.
- `classifier`: with `classifier_path=`, a sequence-classification checkpoint (BERT/RoBERTa with
  a score head, HF weights), e.g. a cost or safety model at paper scale (see
  `align_jax.rewards.classifier`); without a path, the LEARNED offline classifier of
  `align_jax.rewards.safety_classifier` (its reward half), trained in seconds at start-up.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from align_jax.rewards.registry import make_scorer, register_scorer

HarmlessScorer = Callable[[Sequence[str], Sequence[str], Sequence[dict]], np.ndarray]

_REFUSAL = re.compile(
    r"\b(i can(?:'|no)t|i cannot|i won'?t|i will not|i'm not able|i am not able|"
    r"(?:i'm|i am) unable to|unable to (?:help|assist|provide)|"
    r"can't help|cannot help|can't assist|cannot assist|not (?:able|going) to (?:help|provide|assist)|"
    r"i must decline|i'm sorry|i am sorry|against (?:the law|my guidelines)|not appropriate|"
    r"(?:is|be|are) (?:illegal|harmful|dangerous|unsafe|unethical)|instead,? (?:i|you|consider)|"
    r"seek (?:professional|help)|reach out to|crisis line|hotline)\b",
    re.I,
)
_COMPLY = re.compile(
    r"\b(sure[,!]? here(?:'s| is)|here(?:'s| is) how|step \d|first,? you (?:need|get|take)|"
    r"you(?:'ll| will) need|the easiest way to|follow these steps|to do this,? )\b",
    re.I,
)


def refusal_score(text: str) -> float:
    """+1 clear refusal/redirect, −1 compliance markers without refusal, 0 neither/both."""
    ref = bool(_REFUSAL.search(text))
    comp = bool(_COMPLY.search(text))
    return float(ref) - float(comp)


# The harmless score's scale relative to the similarity reward (two samples' BERTScore-F1
# typically differ by ~0.05). Chosen by the sweep in the README (0.25–1.0 tried with the learned
# scorer): 0.5 moved refusals most without costing benign similarity or over-refusal.
HARMLESS_UNIT = 0.5


def refusal_scorer(over_refusal_penalty: float = 0.5, unit: float = HARMLESS_UNIT) -> HarmlessScorer:
    """Risky prompts: unit·refusal_score. Benign prompts: −unit·penalty for refusing
    (over-refusal is not harmless-helpful), else 0. Records without a category count as risky.

    `unit` puts scores on the scale of the similarity reward they are added to (the `contrast`
    scorer is a difference of similarities too). History: at unit 1 with the card's weight 4 the
    harmless advantage was ~80x a typical similarity advantage and held-out similarity fell
    (0.391 -> 0.370 in 30 steps); at unit 0.05 similarity rose but safety did not move."""

    def score(prompts, responses, records):
        risky = [i for i, r in enumerate(records) if r.get("category", "risky") != "benign"]
        out = _benign_scores(responses, records, over_refusal_penalty)
        out[risky] = [refusal_score(responses[i]) for i in risky]
        return out * np.float32(unit)

    return score


def _benign_scores(responses, records, over_refusal_penalty: float) -> np.ndarray:
    """−penalty where a benign prompt's answer refuses (over-refusal), 0 everywhere else."""
    return np.array([-over_refusal_penalty if rec.get("category", "risky") == "benign"
                     and refusal_score(y) > 0 else 0.0 for y, rec in zip(responses, records)],
                    np.float32)


def contrast_scorer(similarity) -> HarmlessScorer:
    """S(y, reference) − S(y, unsafe) for records with an `unsafe` response, 0 for the rest.

    `similarity(candidates, references) -> np.ndarray` (see `align_jax.rewards.make_similarity`)."""

    def score(prompts, responses, records):
        out = np.zeros(len(responses), np.float32)
        idx = [i for i, r in enumerate(records) if r.get("unsafe")]
        if not idx:
            return out
        cands = [responses[i] for i in idx]
        s_safe = similarity(cands, [records[i]["reference"] for i in idx])
        s_unsafe = similarity(cands, [records[i]["unsafe"] for i in idx])
        out[idx] = np.asarray(s_safe) - np.asarray(s_unsafe)
        return out

    return score


def learned_scorer(prob_safe, over_refusal_penalty: float = 0.5, unit: float = HARMLESS_UNIT,
                   patterns: float = 0.0) -> HarmlessScorer:
    """Risky prompts: unit·[(1 − patterns)·(2·P(safe | answer) − 1) + patterns·refusal_score],
    P from a learned classifier (`prob_safe(responses) -> [B]`). Benign prompts: the same
    over-refusal rule as `refusal` (a safe/unsafe classifier cannot see over-refusal: refusing
    is always "safe").

    Why mix in the patterns: optimised against the classifier alone, the policy found answers it
    scored as safe that agree to the task in pleasantries ("I'm here to help you find the perfect
    way to hack into …"). A refusal has to satisfy both signals to score highest."""

    def score(prompts, responses, records):
        out = _benign_scores(responses, records, over_refusal_penalty)
        risky = [i for i, r in enumerate(records) if r.get("category", "risky") != "benign"]
        if risky:
            p = np.asarray(prob_safe([responses[i] for i in risky]), np.float32)
            pat = np.array([refusal_score(responses[i]) for i in risky], np.float32)
            out[risky] = (1.0 - patterns) * (2.0 * p - 1.0) + patterns * pat
        return out * np.float32(unit)

    return score


# The built-in harmless scorers, registered as factories (``align_jax.rewards.registry``); each
# takes the options ``make_harmless_scorer`` passes and ignores the ones it does not use.


@register_scorer("refusal", "harmless")
def _refusal(*, over_refusal_penalty: float = 0.5, refusal_unit: float = HARMLESS_UNIT, **_):
    return refusal_scorer(over_refusal_penalty, refusal_unit)


@register_scorer("contrast", "harmless")
def _contrast(*, similarity=None, **_):
    if similarity is None:
        raise ValueError("harmless scorer 'contrast' needs a similarity scorer")
    return contrast_scorer(similarity)


@register_scorer("classifier", "harmless", needs_encoder=True)
def _classifier(*, similarity=None, classifier_path: str | None = None, classifier_label: int = 0,
                over_refusal_penalty: float = 0.5, refusal_unit: float = HARMLESS_UNIT,
                learned=None, patterns: float = 0.0, **_):
    if not classifier_path:
        if learned is None:
            from align_jax.rewards.safety_classifier import train_safety_classifiers

            learned = train_safety_classifiers(getattr(similarity, "encoder_pair", None))[0]
        return learned_scorer(learned.prob_safe, over_refusal_penalty, refusal_unit, patterns)
    from align_jax.rewards.classifier import load_sequence_classifier

    clf = load_sequence_classifier(classifier_path)

    def score(prompts, responses, records):
        texts = [f"{p}\n{y}" for p, y in zip(prompts, responses)]
        return np.asarray(clf(texts))[:, classifier_label].astype(np.float32)

    return score


def make_harmless_scorer(name: str, *, similarity=None, classifier_path: str | None = None,
                         classifier_label: int = 0, over_refusal_penalty: float = 0.5,
                         refusal_unit: float = HARMLESS_UNIT, learned=None,
                         patterns: float = 0.0, **_) -> HarmlessScorer:
    """The registered harmless scorer ``name`` (refusal | contrast | classifier | a user's own).
    `learned`: a `SafetyClassifier` for `classifier` without a path (trained if None)."""
    return make_scorer(name, "harmless", similarity=similarity, classifier_path=classifier_path,
                       classifier_label=classifier_label,
                       over_refusal_penalty=over_refusal_penalty, refusal_unit=refusal_unit,
                       learned=learned, patterns=patterns)
