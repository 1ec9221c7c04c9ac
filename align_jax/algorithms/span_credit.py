"""REINFORCE with span credit: some reward components credit only a span of each response.

    objective = SpanCreditObjective(rcfg, tokenizer, span_components=("brier",),
                                    span_start=confidence.answer_end)
    train_online(..., objective=objective)

Why: RefAlign's update gives every token of a sample the same advantage Σ_c w_c·adv(R_c). For
the confidence variant that mixes two decisions: the answer (judged by quality and correctness)
and the confidence statement after it (judged by the calibration term). The statement cannot
change whether the answer was right, yet with one advantage per sample it is pushed up whenever
its sample's answer was right — at correct_weight 2 that correctness noise is larger than the
calibration signal, and the stated level drifts to one value for every question (seeds 1 and 2
of the sequence-credit default ended at "80%" / "60%" on 49 of 50 held-out answers). Here the
tokens after the span's first get only the span components' advantage and the tokens before
it only the others' (each component's advantage over its prompt's K samples, as in
``refalign.compute_advantages``). The span's FIRST token gets both: starting the statement is
what ends the answer, so it decides the answer's reward too — without that, a response that is
only "Confidence: 2%" (no answer: wrong, but at a low level the best Brier value) escaped the
answer's penalty and spread within three steps. With ``first_token="head"`` that token gets
the others' advantage only: the level is stated by the tokens after it, and a well-judged low
level after a wrong (e.g. cut-short) answer then cannot pay for ending the answer there.
A response with no span (``span_start`` None) credits every token with all components, as the
sequence-level update does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from align_jax.algorithms import refalign as ra
from align_jax.algorithms.token_objective import shift_to_train_layout
from align_jax.errors import ConfigError
from align_jax.rewards.similarity import strip_for_scoring


def span_token_start(tokenizer, tokens: Sequence[int], char_start: int,
                     special_tokens: Sequence[str] = ()) -> int:
    """Index of the first token whose text reaches past ``char_start`` of the response as the
    rollout scores it (decoded, ``strip_for_scoring``); len(tokens) when none does."""
    for i in range(len(tokens)):
        text = tokenizer.decode(list(tokens[: i + 1]), skip_special_tokens=True)
        if len(strip_for_scoring(text, special_tokens)) > char_start:
            return i
    return len(tokens)


def span_masks(tokenizer, ro: ra.Rollout, span_start: Callable[[str], int | None]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([R, N] 1 on each response's span tokens, [R, N] 1 on its first span token, [R] whether
    the response has a span); padding after a response's length is 0 in both masks."""
    toks, lens = np.asarray(ro.out.tokens), np.asarray(ro.out.lengths)
    span, first = np.zeros(toks.shape, np.float32), np.zeros(toks.shape, np.float32)
    has = np.zeros(toks.shape[0], bool)
    special = tokenizer.all_special_tokens
    for r, text in enumerate(ro.texts):
        start = span_start(text)
        if start is None:
            continue
        has[r] = True
        i = span_token_start(tokenizer, toks[r, : lens[r]].tolist(), start, special)
        span[r, i: lens[r]] = 1.0
        first[r, i: min(i + 1, lens[r])] = 1.0
    return span, first, has


@dataclasses.dataclass(frozen=True)
class SpanCreditObjective:
    """RefAlign's REINFORCE loss with per-token advantages: ``span_components`` credit the span
    tokens, every other component the tokens before them (``make_batch`` / ``make_loss_fn``, what
    ``online_loop.train_online`` takes)."""

    cfg: ra.RefAlignConfig
    tokenizer: Any
    span_components: tuple[str, ...]
    span_start: Callable[[str], int | None]
    # the span's first token: "both" (head + span components) | "head" (the others only)
    first_token: str = "both"

    def __post_init__(self):
        if self.first_token not in ("both", "head"):
            raise ConfigError(f"first_token={self.first_token!r}: expected 'both' or 'head'")

    def make_loss_fn(self):
        return ra.make_loss_fn(self.cfg)

    def make_batch(self, ro: ra.Rollout, components) -> tuple[dict, dict]:
        missing = [c for c in self.span_components if c not in components]
        if missing or len(self.span_components) == len(components):
            raise ConfigError(f"span_components {self.span_components}: each must be one of the "
                              f"reward's components {tuple(components)}, and some must remain")
        _, stats = ra.compute_advantages(components, self.cfg.k, self.cfg)
        head, _ = ra.compute_advantages(
            {c: v for c, v in components.items() if c not in self.span_components},
            self.cfg.k, self.cfg)
        tail, _ = ra.compute_advantages({c: components[c] for c in self.span_components},
                                        self.cfg.k, self.cfg)
        span, first, has = span_masks(self.tokenizer, ro, self.span_start)
        mask = np.asarray(ro.out.mask, np.float32)
        if self.first_token == "both":
            adv_rn = np.where(span > 0, tail[:, None], head[:, None]) + first * head[:, None]
        else:  # the first span token belongs to the head: only the tokens after it get the tail
            adv_rn = np.where((span > 0) & (first == 0), tail[:, None], head[:, None])
        adv_rn = np.where(has[:, None], adv_rn, (head + tail)[:, None]) * mask
        batch = ra.train_batch(ro.out, np.zeros(mask.shape[0], np.float32))
        batch["adv"] = shift_to_train_layout(adv_rn, np.asarray(ro.out.prompt_ids).shape[1])
        stats["span/has_frac"] = float(has.mean())
        stats["span/tokens_frac"] = float((span * mask).sum() / max(mask.sum(), 1.0))
        return batch, stats
