"""RefAlign confidence variant: parse verbalised confidence, CONQORD-style order reward, and the
calibration metrics (ECE, Brier, AUROC, Pearson; reliability diagram).

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

_NUM = r"(\d{1,3}(?:\.\d+)?|\.\d+)(?!\d)"
# what may follow a number: percent, or a fraction of 100 / 10
_UNIT = r"\s*(%|percent\b|per\s*cent\b|/\s*100\b|/\s*10\b|out\s+of\s+100\b|out\s+of\s+10\b)?"
# "Confidence: 80%", "confidence level is about 0.8", "my confidence: 8/10", "confident at 90%"
_CONF_FIRST = re.compile(
    r"confiden(?:ce|t)(?:\s+(?:level|score|rating))?\s*(?:is|of|at|=|:|-|–|—)?\s*"
    r"(?:about|around|approximately|roughly|~)?\s*" + _NUM + _UNIT, re.I)
# "I'm 99.9% confident", "80% sure", "90 percent certain", "with 75% confidence"
_NUM_FIRST = re.compile(_NUM + r"\s*(%|percent\b|per\s*cent\b)\s*(?:confiden\w*|sure|certain)",
                        re.I)
# "Confidence: high" — a stated level without a number (VERBAL_LEVELS)
_WORD = re.compile(r"confiden(?:ce|t)(?:\s+(?:level|score|rating))?\s*(?:is|=|:|-|–|—)?\s*"
                   r"(very\s+high|very\s+low|high|medium|moderate|low)\b", re.I)
VERBAL_LEVELS = {"very low": 0.1, "low": 0.25, "medium": 0.5, "moderate": 0.5, "high": 0.75,
                 "very high": 0.9}  # [open] no standard: the midpoints of a 5-level scale


def _number(text: str, unit: str | None) -> float | None:
    val = float(text)
    unit = " ".join((unit or "").lower().split())
    if unit.endswith("10") and not unit.endswith("100"):  # "8/10", "8 out of 10"
        return val / 10.0 if val <= 10 else None
    if not unit and val <= 1.0 and "." in text:  # "0.8", "1.0": already a probability
        return val
    return val / 100.0 if val <= 100 else None  # "80%", "80 percent", "90/100", bare "80"


def parse_confidence(text: str) -> float | None:
    """Confidence in [0, 1] from a response, or None when it states none.

    Accepts 'Confidence: 80%', 'Confidence: 0.8', 'confidence is 0.65', 'Confidence: 8/10',
    "I'm 99.9% confident", 'I am 75% sure', '90 percent certain', 'with 70% confidence',
    'Confidence: 90/100' and the verbal levels of VERBAL_LEVELS ('Confidence: high' = 0.75).
    A bare number after 'confidence' is a probability when written with a point and at most 1
    ('0.8'), else a percentage ('80', also '1'). The LAST mention wins (models often restate).
    Values above 100% are rejected as unparsable."""
    found: list[tuple[int, float]] = []
    for pat in (_CONF_FIRST, _NUM_FIRST):
        for m in pat.finditer(text):
            val = _number(m.group(1), m.group(2))
            if val is not None:
                found.append((m.start(1), val))
    for m in _WORD.finditer(text):
        found.append((m.start(1), VERBAL_LEVELS[" ".join(m.group(1).lower().split())]))
    if not found:
        return None
    return float(max(found)[1])


def answer_end(text: str) -> int | None:
    """Character offset where the answer part ends and the confidence statement begins (a
    dangling "I'm" / "with" before it belongs to the statement); None when nothing in the text
    mentions a confidence."""
    starts = [m.start() for pat in (_CONF_FIRST, _NUM_FIRST, _WORD) for m in pat.finditer(text)]
    starts += [m.start() for m in re.finditer(r"confiden\w*", text, re.I)][:1]
    if not starts:
        return None
    head = text[:min(starts)].rstrip()
    return len(re.sub(r"\b(?:i'?m|i’m|i am|with|and|my)$", "", head, flags=re.I).rstrip())


def strip_confidence(text: str) -> str:
    """The answer part without the confidence statement (what quality and correctness are
    scored on): the text before the first confidence mention, without a dangling "I'm" /
    "with" ("63 - 20 = 43. I'm 99.9% confident" → "63 - 20 = 43.")."""
    end = answer_end(text)
    return (text if end is None else text[:end]).strip()


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


def brier_reward(conf_pk: np.ndarray, correct_pk: np.ndarray, missing_penalty: float = -1.0):
    """[P, K] confidences (NaN = missing) and judged correctness -> [P, K] rewards −(c − y)².

    A proper scoring rule: its expectation over the answer's correctness is maximised by stating
    the true probability of being right, so it teaches the confidence LEVEL per question (the
    order term only compares the K samples of one prompt and is blind to levels: with two
    samples of equal quality it carries no signal). Missing = ``missing_penalty`` (default −1,
    the worst Brier value, so not stating a confidence never pays)."""
    c = np.asarray(conf_pk, np.float64)
    y = np.asarray(correct_pk, np.float64)
    r = -((np.where(np.isnan(c), 0.0, c) - y) ** 2)
    return np.where(np.isnan(c), missing_penalty, r).astype(np.float32)


def brier_level_advantage(conf_pk: np.ndarray, correct_pk: np.ndarray,
                          missing_penalty: float = -1.0) -> np.ndarray:
    """[P, K] confidences (NaN = missing) and correctness -> [P, K] advantages of each sample's
    stated level over the level the prompt's OTHER samples stated, both scored on the sample's
    own answer: B(c_k, y_k) − B(c̄_−k, y_k), B = −(c − y)², c̄_−k = the mean parsed confidence of
    the other samples (0.5 when none has one); a missing confidence scores ``missing_penalty``.

    Why: the statement comes after the answer, so y_k is fixed before the level is chosen and a
    baseline that depends on y_k (not on c_k) keeps REINFORCE unbiased. The prompt-mean baseline
    compares B(c_k, y_k) with B(c_j, y_j): a wrong answer stated at 2% then beats a right one at
    80% (advantage +0.02) — the other sample's correctness is noise on the level's gradient.
    Here a right answer favours a level above c̄, a wrong one a level below, on every sample."""
    c = np.asarray(conf_pk, np.float64)
    y = np.asarray(correct_pk, np.float64)
    parsed = ~np.isnan(c)
    c0 = np.where(parsed, c, 0.0)
    n_other = parsed.sum(1, keepdims=True) - parsed
    s_other = c0.sum(1, keepdims=True) - c0
    c_bar = np.where(n_other > 0, s_other / np.maximum(n_other, 1), 0.5)
    return (brier_reward(c, y, missing_penalty) + (c_bar - y) ** 2).astype(np.float32)


CALIBRATION_TERMS = ("brier", "order")  # `reward_form` of experiments/refalign_confidence.py


def is_correct(reference: str, answer: str) -> bool:
    """The reference (case-folded, trailing period dropped) inside the answer part, as whole
    words: a plain substring test judged "30 - 28 = 28" right for "2" and anything with a "c"
    right for "C" (carbon)."""
    ref = re.escape(reference.lower().strip(" ."))
    return re.search(rf"(?<!\w){ref}(?!\w)", strip_confidence(answer).lower()) is not None


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


def brier(conf, correct) -> float:
    """Brier score: mean of (confidence − correct)², 0 = perfect, 0.25 = always saying 50%."""
    conf = np.asarray(conf, np.float64)
    return float(np.mean((conf - np.asarray(correct, np.float64)) ** 2))


def reliability_bins(conf, correct, n_bins: int = 10) -> list[dict]:
    """The non-empty equal-width bins: {lo, hi, n, confidence (mean), accuracy}."""
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": int((bins == b).sum()),
             "confidence": float(conf[bins == b].mean()),
             "accuracy": float(correct[bins == b].mean())}
            for b in range(n_bins) if (bins == b).any()]


def _scores(conf, correct, quality=None, suffix: str = "") -> dict:
    """ECE, Brier, AUROC (and Pearson with ``quality``) of these answers; a metric that is
    undefined on them is a string saying why (``undefined (one class: all 3 correct)``)."""
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, bool)
    n = len(conf)
    if n == 0:
        none = "undefined (no answers)"
        out = {"ece": none, "brier": none, "auroc": none}
        if quality is not None:
            out["pearson"] = none
        return {k + suffix: v for k, v in out.items()}
    out = {"ece": ece(conf, correct), "brier": brier(conf, correct)}
    if correct.all() or not correct.any():
        out["auroc"] = f"undefined (one class: {'all' if correct.all() else 'none'} of {n} correct)"
    else:
        out["auroc"] = auroc(conf, correct)
    if quality is not None:
        q = np.asarray(quality, np.float64)
        out["pearson"] = ("undefined (fewer than 2 answers)" if n < 2 else
                          "undefined (every confidence the same)" if conf.std() == 0 else
                          "undefined (every quality the same)" if q.std() == 0 else
                          pearson(conf, q))
    return {k + suffix: v for k, v in out.items()}


def calibration_metrics(conf, correct, quality=None, unparsed_confidence: float = 0.5) -> dict:
    """Held-out calibration of one policy's answers. ``conf``: parsed confidences (NaN = none
    stated). ECE / Brier / AUROC / Pearson on the answers WITH a confidence, and ``*_all`` on
    every answer with a missing confidence counted as ``unparsed_confidence`` (a formatting
    failure is not free). Counts are integers."""
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, bool)
    ok = ~np.isnan(conf)
    n = len(conf)
    out = {"answers": int(n), "parsed": int(ok.sum()),
           "parsed_frac": float(ok.mean()) if n else 0.0,
           "accuracy": float(correct.mean()) if n else 0.0}
    q = None if quality is None else np.asarray(quality, np.float64)
    out.update(_scores(conf[ok], correct[ok], None if q is None else q[ok]))
    filled = np.where(ok, conf, unparsed_confidence)
    out.update(_scores(filled, correct, suffix="_all"))
    return out


def paired_calibration(conf_before, correct_before, conf_after, correct_after) -> tuple[dict, dict]:
    """(before, after) ECE / Brier / AUROC on the answers whose confidence parsed BOTH before and
    after training (``*_both``, with their count ``parsed_both``): the same questions on both
    sides, so a change of parse rate cannot pass for a change of calibration."""
    cb, ca = np.asarray(conf_before, np.float64), np.asarray(conf_after, np.float64)
    both = ~np.isnan(cb) & ~np.isnan(ca)
    n = {"parsed_both": int(both.sum())}
    yb, ya = np.asarray(correct_before, bool), np.asarray(correct_after, bool)
    return ({**n, **_scores(cb[both], yb[both], suffix="_both")},
            {**n, **_scores(ca[both], ya[both], suffix="_both")})


def plot_reliability(curves: dict, out_png, n_bins: int = 10, title: str = ""):
    """Reliability diagram: per confidence bin, accuracy against mean stated confidence (marker
    area ∝ answers in the bin; the diagonal is perfect calibration), one line per entry of
    ``curves`` {name: (conf, correct)} (unparsed answers, NaN, left out), and below it the
    number of answers per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / n_bins / (len(curves) + 1)
    for i, (name, (conf, correct)) in enumerate(curves.items()):
        conf = np.asarray(conf, np.float64)
        ok = ~np.isnan(conf)
        rows = reliability_bins(conf[ok], np.asarray(correct)[ok], n_bins)
        e = ece(conf[ok], np.asarray(correct)[ok], n_bins) if ok.any() else float("nan")
        label = f"{name}: {int(ok.sum())} of {len(conf)} parsed, ECE {e:.3f}"
        if rows:
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "-o",
                    color=f"C{i}", label=label, alpha=0.8)
            ax.scatter([r["confidence"] for r in rows], [r["accuracy"] for r in rows],
                       s=[20 + 15 * r["n"] for r in rows], color=f"C{i}", alpha=0.3)
        else:
            ax.plot([], [], "-o", color=f"C{i}", label=label)
        hist.bar([r["lo"] + (i + 0.5) * width for r in rows], [r["n"] for r in rows], width,
                 color=f"C{i}", label=name)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="accuracy in bin")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    hist.set(xlabel="stated confidence", ylabel="answers")
    hist.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
