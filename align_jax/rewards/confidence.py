"""RefAlign confidence variant: parse verbalised confidence, CONQORD-style order reward, and the
calibration metrics (ECE, AUROC, Pearson).

The order term rewards a sample for stating a confidence that is ordered like its quality among
the K samples of the same prompt: R_order_k = mean_{j≠k} sign(q_k − q_j) · (c_k − c_j).
(docs/methods.md, "Confidence variant": the paper leaves the exact form open; this pairwise
form is zero when confidences are ordered arbitrarily in expectation, positive when they agree
with quality.) A response with no
parsable confidence gets `missing_penalty` instead, so formatting failures are a defined signal,
not a crash.
"""

from __future__ import annotations

import re

import numpy as np

CONFIDENCE_INSTRUCTION = (
    "Answer the question briefly, then on a new line state how confident you are that your "
    "answer is correct as 'Confidence: N%' with N between 0 and 100."
)

_PATTERNS = (
    re.compile(r"confiden\w*\s*(?:level|score)?\s*(?:is|of|[:=\-])?\s*(\d{1,3}(?:\.\d+)?)\s*(%|/\s*100|percent)?", re.I),
    re.compile(r"(\d{1,3}(?:\.\d+)?)\s*(%|percent)\s*(?:confiden|sure|certain)", re.I),
    re.compile(r"confiden\w*\s*(?:is|of|[:=\-])?\s*(0?\.\d+|1\.0+)\b", re.I),
)


def parse_confidence(text: str) -> float | None:
    """Confidence in [0, 1] from a response, or None when it states none.

    Accepts 'Confidence: 80%', 'confidence is 0.8', 'I am 75% sure', '90/100'. The LAST mention
    wins (models often restate). Values above 100 are rejected as unparsable."""
    found: list[tuple[int, float]] = []
    for pat in _PATTERNS:
        for m in pat.finditer(text):
            val = float(m.group(1))
            pct = m.lastindex and m.lastindex >= 2 and m.group(2)
            if not pct and val <= 1.0 and "." in m.group(1):
                found.append((m.start(), val))
            elif val <= 100:
                found.append((m.start(), val / 100.0))
    if not found:
        return None
    return float(sorted(found)[-1][1])


def strip_confidence(text: str) -> str:
    """The answer part without the confidence statement (what quality is scored on)."""
    return re.split(r"\n?\s*confiden\w*", text, maxsplit=1, flags=re.I)[0].strip()


def order_reward(quality_pk: np.ndarray, conf_pk: np.ndarray, missing_penalty: float = -1.0):
    """[P, K] qualities and confidences (NaN = missing) -> [P, K] order rewards."""
    q = np.asarray(quality_pk, np.float64)
    c = np.asarray(conf_pk, np.float64)
    missing = np.isnan(c)
    c0 = np.where(missing, 0.0, c)
    sgn = np.sign(q[:, :, None] - q[:, None, :])  # [P, K, K]
    diff = c0[:, :, None] - c0[:, None, :]
    valid = (~missing[:, :, None]) & (~missing[:, None, :])
    K = q.shape[1]
    valid &= ~np.eye(K, dtype=bool)[None]
    n = np.maximum(valid.sum(-1), 1)
    r = (sgn * diff * valid).sum(-1) / n
    return np.where(missing, missing_penalty, r).astype(np.float32)


def confidence_reward(quality_pk, conf_pk, alpha: float = 1.0, missing_penalty: float = -1.0):
    """R = R_quality + α · R_order (CONQORD-style)."""
    return (np.asarray(quality_pk, np.float32)
            + alpha * order_reward(quality_pk, conf_pk, missing_penalty)).astype(np.float32)


# ---- calibration metrics -----------------------------------------------------------------------
def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins over [0, 1]."""
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.sum() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total / max(len(conf), 1))


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties); NaN if one class."""
    score = np.asarray(score, np.float64)
    label = np.asarray(label).astype(bool)
    n_pos, n_neg = label.sum(), (~label).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def calibration_report(conf, quality, correct_threshold: float) -> dict[str, float]:
    """ECE/AUROC/Pearson/accuracy over responses with a parsed confidence."""
    conf = np.asarray(conf, np.float64)
    quality = np.asarray(quality, np.float64)
    ok = ~np.isnan(conf)
    correct = quality >= correct_threshold
    return {
        "parsed_frac": float(ok.mean()) if len(ok) else 0.0,
        "accuracy": float(correct.mean()) if len(correct) else 0.0,
        "ece": ece(conf[ok], correct[ok]) if ok.any() else float("nan"),
        "auroc": auroc(conf[ok], correct[ok]) if ok.any() else float("nan"),
        "pearson": pearson(conf[ok], quality[ok]) if ok.any() else float("nan"),
    }
