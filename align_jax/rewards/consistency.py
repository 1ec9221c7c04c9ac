"""ALaRM's reward selection by consistency (arXiv 2403.06754; ALGORITHMS.md §2): keep the aspect
reward(s) whose pairwise preferences agree most with the holistic reward's on a sample set.

Pairs: every unordered pair of responses to the SAME prompt (``groups`` gives each response's
prompt; responses to different prompts are never compared, since the holistic reward ranks
answers to one question, not questions). For a pair (i, j) with d_h = h_i − h_j and
d_a = a_i − a_j (|d| ≤ ``tie_tol`` counts as a tie):

  * holistic tie   → the pair is left out (the holistic reward expresses no preference to agree
                     with); counted in ``holistic_ties``;
  * aspect tie     → ``aspect_ties="half"`` (default): counts 0.5, as an AUC counts ties, so an
                     aspect that cannot tell answers apart scores chance (0.5), not 0 or 1;
                     ``"disagree"``: counts 0; ``"skip"``: left out like a holistic tie;
  * otherwise      → 1 if sign(d_a) = sign(d_h), else 0.

agreement = Σ counts / #pairs kept. The choice of tie rule is [open] in the paper.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from align_jax.errors import ConfigError

ASPECT_TIES = ("half", "disagree", "skip")


class Agreement(NamedTuple):
    rate: float  # NaN when no pair could be compared
    pairs: int  # pairs in the denominator
    aspect_ties: int  # pairs (holistic non-tied) on which the aspect ties
    holistic_ties: int  # pairs left out because the holistic reward ties


def same_prompt_pairs(groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j), i < j, of every pair of responses sharing a group (prompt)."""
    by_group: dict[Any, list[int]] = {}
    for idx, g in enumerate(groups):
        # chat-message prompts (lists) are unhashable: group them by their repr
        by_group.setdefault(g if isinstance(g, Hashable) else repr(g), []).append(idx)
    ii, jj = [], []
    for members in by_group.values():
        m = np.asarray(members)
        a, b = np.triu_indices(len(m), k=1)
        ii.append(m[a])
        jj.append(m[b])
    if not ii:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(ii), np.concatenate(jj)


def agreement_rate(holistic, aspect, groups: Sequence[Any], *, tie_tol: float = 0.0,
                   aspect_ties: str = "half") -> Agreement:
    """How often the aspect prefers the same response as the holistic reward (module
    docstring). ``holistic``, ``aspect``: one score per response; ``groups``: its prompt."""
    if aspect_ties not in ASPECT_TIES:
        raise ConfigError(f"aspect_ties={aspect_ties!r}: expected one of {ASPECT_TIES}")
    h = np.asarray(holistic, np.float64).reshape(-1)
    a = np.asarray(aspect, np.float64).reshape(-1)
    if not (len(h) == len(a) == len(groups)):
        raise ValueError(f"{len(h)} holistic, {len(a)} aspect scores, {len(groups)} groups")
    i, j = same_prompt_pairs(groups)
    dh, da = h[i] - h[j], a[i] - a[j]
    h_tie = np.abs(dh) <= tie_tol
    a_tie = (np.abs(da) <= tie_tol) & ~h_tie
    keep = ~h_tie & ~a_tie if aspect_ties == "skip" else ~h_tie
    agree = (np.sign(dh) == np.sign(da)) & ~a_tie
    credit = np.where(a_tie, 0.5 if aspect_ties == "half" else 0.0, agree.astype(np.float64))
    n = int(keep.sum())
    rate = float(credit[keep].sum() / n) if n else float("nan")
    return Agreement(rate, n, int(a_tie.sum()), int(h_tie.sum()))


def select_aspects(holistic, candidates: Mapping[str, Any], groups: Sequence[Any], *,
                   top_n: int = 1, tie_tol: float = 0.0, aspect_ties: str = "half"
                   ) -> tuple[list[str], dict[str, dict]]:
    """The ``top_n`` candidates with the highest agreement rate, best first, and a report
    {name: {"agreement", "pairs", "aspect_ties", "holistic_ties", "rank", "selected"}} over every
    candidate. Equal rates keep the candidates' given order (stable sort); a candidate with no
    comparable pair (NaN) ranks last and is never selected."""
    if top_n < 1:
        raise ConfigError(f"top_n={top_n}: must be ≥ 1")
    if not candidates:
        raise ConfigError("consistency selection needs at least one candidate aspect")
    res = {name: agreement_rate(holistic, s, groups, tie_tol=tie_tol, aspect_ties=aspect_ties)
           for name, s in candidates.items()}
    names = list(res)
    order = sorted(range(len(names)), key=lambda k: (np.isnan(res[names[k]].rate),
                                                     -np.nan_to_num(res[names[k]].rate), k))
    ranked = [names[k] for k in order]
    chosen = [n for n in ranked[:top_n] if not np.isnan(res[n].rate)]
    if not chosen:
        raise ValueError("no candidate aspect has a comparable pair: the sample set needs ≥ 2 "
                         "responses per prompt with different holistic rewards")
    report = {n: {"agreement": res[n].rate, "pairs": res[n].pairs,
                  "aspect_ties": res[n].aspect_ties, "holistic_ties": res[n].holistic_ties,
                  "rank": ranked.index(n) + 1, "selected": n in chosen} for n in names}
    return chosen, report


def score_candidates(scorers: Mapping[str, Any], prompts: Sequence[Any],
                     responses: Sequence[str]) -> dict[str, np.ndarray]:
    """{name: scorer(prompts, responses)} — the candidates' scores on the sample set."""
    return {name: np.asarray(fn(prompts, responses), np.float32) for name, fn in scorers.items()}
