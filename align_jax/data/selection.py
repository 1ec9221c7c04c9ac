"""Preference-data selection by alignment potential (arXiv 2503.01864; ALGORITHMS.md §4).

    m_ex = score(y_w) − score(y_l)                   explicit margin (dataset scores, RM, scorer)
    m_im = |avg_lp(y_w) − avg_lp(y_l)|               implicit margin of the model to be trained
    M_AP = z(m_ex) − w · z(m_im)                     z over the WHOLE dataset (never per batch)

A selector turns the two margin arrays into one score per pair (higher = keep); the top
``top`` fraction is kept, best first. Group semantics (ALGORITHMS.md §8): the z-scores are
statistics of the full dataset passed in, so the selection cannot depend on how the implicit
pass was batched or sharded. Pure numpy (the data layer does not import jax); the model pass
and the scorers live in ``align_jax.algorithms.ap_margins``.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from align_jax.data.readers import RawRecord
from align_jax.data.schemas import PreferencePair, prompt_text
from align_jax.errors import ConfigError, DataError

SELECTORS = ("ap", "explicit", "implicit_large", "implicit_small", "random")
SCORE_FIELDS = ("score_chosen", "score_rejected")  # UltraFeedback-binarized's names


def zscore(x) -> np.ndarray:
    """(x − mean) / std over ALL of ``x`` (population std, float64). A constant array has no
    spread to rank by: it maps to zeros rather than NaN."""
    x = np.asarray(x, np.float64)
    sd = x.std()
    return np.zeros_like(x) if not np.isfinite(sd) or sd == 0 else (x - x.mean()) / sd


def alignment_potential(m_ex, m_im, w: float = 1.0) -> np.ndarray:
    """M_AP = z(m_ex) − w·z(m_im): a large explicit margin the model has not learnt yet."""
    m_ex, m_im = np.asarray(m_ex, np.float64), np.asarray(m_im, np.float64)
    if m_ex.shape != m_im.shape or m_ex.ndim != 1:
        raise ValueError(f"margins must be two [N] arrays, got {m_ex.shape} and {m_im.shape}")
    return zscore(m_ex) - w * zscore(m_im)


def selector_scores(name: str, m_ex, m_im, *, w: float = 1.0, seed: int = 0) -> np.ndarray:
    """One float64 score per pair for selector ``name`` (higher = selected first):
    ``ap`` M_AP, ``explicit`` m_ex, ``implicit_large`` m_im, ``implicit_small`` −m_im,
    ``random`` a seeded uniform draw (the paper's random baseline)."""
    m_ex, m_im = np.asarray(m_ex, np.float64), np.asarray(m_im, np.float64)
    if name == "ap":
        return alignment_potential(m_ex, m_im, w)
    if name == "explicit":
        return m_ex
    if name == "implicit_large":
        return m_im
    if name == "implicit_small":
        return -m_im
    if name == "random":
        return np.random.default_rng(seed).random(m_ex.shape[0])
    raise ConfigError(f"selector={name!r}: unknown selector; expected one of {list(SELECTORS)}")


def num_selected(n: int, top: float) -> int:
    """How many of ``n`` pairs the fraction ``top`` keeps (rounded, at least one)."""
    if not 0.0 < top <= 1.0:
        raise ConfigError(f"top={top}: expected a fraction in (0, 1]")
    return min(n, max(1, int(math.floor(top * n + 0.5))))


def select_top(scores, top: float = 0.4) -> np.ndarray:
    """Indices of the best ``top`` fraction, best first; ties keep dataset order (stable), so
    the result is deterministic."""
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    return order[:num_selected(len(scores), top)]


def load_pair_rows(source, data_format: str = "auto") -> tuple[list[PreferencePair], list[RawRecord]]:
    """The pairs of ``source`` (read by the same adapters training uses) and, index for index,
    the raw records they came from (written back unchanged by the selection)."""
    from align_jax.data.formats import load_examples
    from align_jax.data.readers import iter_records

    pairs = load_examples(source, data_format).examples
    records = [r for r in iter_records(source) if r.error is None]
    bad = next((i for i, p in enumerate(pairs) if not isinstance(p, PreferencePair)), None)
    if bad is not None:
        raise DataError(f"selection needs preference pairs, got {type(pairs[bad]).__name__} "
                        "(data_format=pairs | conversational | hh | ...)", source=str(source))
    if len(records) != len(pairs):  # an adapter filtered records: indices would not line up
        raise DataError(f"{len(records)} records gave {len(pairs)} pairs; selection needs one "
                        "pair per record", source=str(source))
    return pairs, records


# ----------------------------------------------------------------------------- explicit margins


def _number(rec: RawRecord, name: str) -> float:
    v = rec.data.get(name) if isinstance(rec.data, dict) else None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        got = "missing" if v is None else f"{v!r}"
        raise DataError(f"explicit=dataset expects numeric fields {list(SCORE_FIELDS)} "
                        f"(as in UltraFeedback-binarized); {name!r} is {got}",
                        source=rec.source, location=rec.location)
    return float(v)


def dataset_margins(records: Sequence[RawRecord]) -> np.ndarray:
    """m_ex from each record's own ``score_chosen − score_rejected``; a record without them is a
    DataError naming its file and line."""
    return np.array([_number(r, SCORE_FIELDS[0]) - _number(r, SCORE_FIELDS[1]) for r in records],
                    np.float64)


def has_dataset_scores(records: Sequence[RawRecord]) -> bool:
    return all(isinstance(r.data, dict) and all(k in r.data for k in SCORE_FIELDS)
               for r in records)


def references(pairs: Sequence[PreferencePair], records: Sequence[RawRecord],
               field: str = "reference") -> list[str]:
    """The text each pair's responses are compared with by a similarity scorer: the record's
    ``field``, or with ``field="prompt"`` the prompt's last user turn (a relevance proxy for data
    that ships no reference). ``field="auto"``: ``reference`` if every record has one, else the
    prompt."""
    if field == "auto":
        field = ("reference" if all(isinstance(r.data, dict) and r.data.get("reference")
                                    for r in records) else "prompt")
    if field == "prompt":
        return [prompt_text(p.prompt) for p in pairs]
    out = []
    for p, r in zip(pairs, records):
        v = r.data.get(field) if isinstance(r.data, dict) else None
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"a similarity margin needs a non-empty string field {field!r} to "
                            f"score against (reference_field=prompt uses the prompt)",
                            source=r.source, location=r.location)
        out.append(v)
    return out


def pair_score_margins(score, pairs: Sequence[PreferencePair], refs: Sequence[str]) -> np.ndarray:
    """m_ex = S(chosen, ref) − S(rejected, ref) for a scorer ``S(candidates, references)``; both
    responses go through ONE call so a batched scorer sees them together."""
    n = len(pairs)
    s = np.asarray(score([p.chosen for p in pairs] + [p.rejected for p in pairs], list(refs) * 2),
                   np.float64).reshape(-1)
    return s[:n] - s[n:]


def selected_rows(records: Sequence[RawRecord], idx, m_ex, m_im, m_ap) -> list[dict]:
    """The chosen input rows unchanged, in selection order, plus the three scores."""
    return [{**records[i].data, "margin_explicit": float(m_ex[i]),
             "margin_implicit": float(m_im[i]), "alignment_potential": float(m_ap[i])}
            for i in map(int, idx)]
