"""Metrics that say what they mean (issue 20): ties count 0.5 (a fair coin) in every ranking
accuracy, undefined metrics say why, counts print as integers, curve legends name the raw and
smoothed lines, sample tables carry the reference, and the confidence variant's calibration
metrics (Brier, ECE parsed / all / parsed both before and after, reliability diagram).

Oracles: hand-computed small cases."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import ListLogps, ListwiseConfig, plackett_luce_loss
from align_jax.losses.accuracy import pair_accuracy, top1_accuracy
from align_jax.rewards import confidence as C
from align_jax.train import report


def test_pair_accuracy_counts_a_tie_as_half():
    got = pair_accuracy(jnp.array([1.0, 0.0, 0.3, 0.30005, 2e-6]),
                        jnp.array([0.0, 1.0, 0.3, 0.3, -1e-6]))
    np.testing.assert_array_equal(np.asarray(got), [1.0, 0.0, 0.5, 0.5, 0.5])


def test_top1_accuracy_is_a_fair_coin_among_tied_top_items():
    mask = jnp.array([[True] * 4, [True] * 4, [True, True, True, False], [True] * 4])
    pred = jnp.array([[0.0, 0.0, 0.0, 0.0],  # all tie: 1/4
                      [0.5, 0.5, 0.0, 0.0],  # top two tie, one of them best: 1/2
                      [0.0, 0.2, 0.1, 9.0],  # masked item ignored; top = item 1 = best: 1
                      [0.9, 0.1, 0.0, 0.0]])  # top = item 0, best is item 2: 0
    truth = jnp.array([[1.0, 3.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 2.0, 1.0, 5.0],
                       [0.0, 0.0, 4.0, 0.0]])
    np.testing.assert_allclose(np.asarray(top1_accuracy(pred, truth, mask)),
                               [0.25, 0.5, 1.0, 0.0])


def test_listwise_top1_of_a_policy_equal_to_its_reference_is_one_over_k():
    """Held-out (exactly equal) and training-step (float noise) views agree: 1/K."""
    lp = jnp.array([[-3.0, -5.0, -4.0, -6.0], [-2.0, -2.5, -3.0, -1.0]])
    scores = jnp.array([[1.0, 4.0, 2.0, 3.0], [4.0, 3.0, 2.0, 1.0]])
    mask = jnp.ones((2, 4), bool)
    for noise in (0.0, 3e-6):
        inp = ListLogps(lp + noise * jnp.array([[1, -1, 1, -1]] * 2), lp, None, mask, scores)
        _, m = plackett_luce_loss(inp, ListwiseConfig())
        np.testing.assert_allclose(np.asarray(m["rewards/top1_accuracy"]), [0.25, 0.25])


def test_printed_metrics_integers_and_reasons():
    m = {"examples": 8, "auroc": "undefined (one class: all 3 of 3 correct)",
         "ece": float("nan"), "accuracy": 0.625}
    assert report.fmt_metrics(m) == ("examples=8, auroc=undefined (one class: all 3 of 3 "
                                     "correct), ece=undefined, accuracy=0.6250")
    table = report.summary_table(m, {"examples": 8, "auroc": 0.75, "accuracy": 0.5})
    assert "| examples | 8 | 8 |" in table
    assert "| auroc | undefined (one class: all 3 of 3 correct) | 0.7500 |" in table
    assert "| ece | undefined | – |" in table
    seeds = report.seed_table([{"seed": s, "before": {"auroc": b}, "after": {"auroc": a}}
                               for s, b, a in ((0, "undefined (x)", 0.6), (1, 0.5, 0.8),
                                               (2, 0.7, "undefined (one class)"))])
    # before: mean of 0.5, 0.7 (2 of 3 defined); after: 0.6, 0.8 (sample sd 0.1414)
    assert "| auroc | 0.600 ± 0.141 (2 of 3 seeds) | 0.700 ± 0.141 (2 of 3 seeds) | 0.600 | " \
           "0.800 | undefined (one class) |" in seeds


def test_curve_legend_names_raw_and_smoothed_lines():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._draw(ax, list(range(16)), [float(i % 3) for i in range(16)], "", "C0")
    assert ax.get_legend_handles_labels()[1] == ["raw", "mean of last 2"]
    ax2 = fig.add_subplot(2, 1, 2)
    report._draw(ax2, [1, 2], [0.0, 1.0], "runA", "C1")  # too short to smooth
    assert ax2.get_legend_handles_labels()[1] == ["runA: raw"]
    plt.close(fig)


def test_sample_table_has_prompt_reference_before_after():
    t = report.sample_table(["p1", "p2"], ["b1", "b2"], ["a1", "a2"], {"category": ["x", "y"]},
                            references=["r1", ""])
    lines = t.splitlines()
    assert lines[0] == "| prompt | reference | before | after | category |"
    assert lines[2] == "| p1 | r1 | b1 | a1 | x |" and lines[3] == "| p2 | – | b2 | a2 | y |"


# ---- confidence variant: calibration ------------------------------------------------------------
def test_brier_and_reliability_bins_hand_computed():
    conf, correct = [0.9, 0.8, 0.3, 0.2], [1, 0, 1, 0]
    # (0.1² + 0.8² + 0.7² + 0.2²) / 4 = (0.01 + 0.64 + 0.49 + 0.04) / 4
    assert C.brier(conf, correct) == pytest.approx(0.295)
    bins = C.reliability_bins([0.05, 0.15, 0.12, 0.95], [0, 1, 0, 1], n_bins=10)
    assert [(b["lo"], b["n"]) for b in bins] == [(0.0, 1), (0.1, 2), (0.9, 1)]
    assert bins[1]["confidence"] == pytest.approx(0.135) and bins[1]["accuracy"] == 0.5


def test_calibration_metrics_parsed_all_and_reasons():
    conf = np.array([0.9, np.nan, 0.2, np.nan])
    correct = np.array([True, True, False, False])
    quality = np.array([0.8, 0.7, 0.1, 0.2])
    m = C.calibration_metrics(conf, correct, quality, unparsed_confidence=0.5)
    assert m["answers"] == 4 and m["parsed"] == 2 and isinstance(m["parsed"], int)
    assert m["parsed_frac"] == 0.5 and m["accuracy"] == 0.5
    # parsed: bins 9 and 2, |0.9-1| + |0.2-0| = 0.3 / 2
    assert m["ece"] == pytest.approx(0.15) and m["brier"] == pytest.approx((0.01 + 0.04) / 2)
    assert m["auroc"] == 1.0 and m["pearson"] == pytest.approx(1.0)
    # all, unparsed = 0.5: bins 9 {1}, 2 {0}, 5 {0.5, 0.5 vs 1, 0}: (0.1 + 0.2 + 2·0) / 4
    assert m["ece_all"] == pytest.approx(0.075)
    assert m["brier_all"] == pytest.approx((0.01 + 0.25 + 0.04 + 0.25) / 4)
    # ranks: 0.2 (neg) < 0.5,0.5 (pos, neg) < 0.9 (pos): pos>neg pairs 1 + 0.5 + 1 + 1 = 3.5 / 4
    assert m["auroc_all"] == pytest.approx(0.875)
    one = C.calibration_metrics([0.9, 0.8, np.nan], [True, True, False], [0.9, 0.8, 0.0])
    assert one["auroc"] == "undefined (one class: all of 2 correct)"
    same = C.calibration_metrics([0.9, 0.9], [True, False], [0.9, 0.1])
    assert same["pearson"] == "undefined (every confidence the same)"
    none = C.calibration_metrics([np.nan, np.nan], [True, False])
    assert none["ece"] == "undefined (no answers)" and none["parsed"] == 0
    assert (report.fmt_metrics({"auroc": one["auroc"]})
            == "auroc=undefined (one class: all of 2 correct)")


def test_paired_calibration_uses_answers_parsed_on_both_sides():
    cb = [0.9, np.nan, 0.6, 0.3]
    ca = [0.8, 0.7, np.nan, 0.1]
    yb, ya = [True, False, False, False], [True, True, True, False]
    b, a = C.paired_calibration(cb, yb, ca, ya)  # answers 0 and 3 only
    assert b["parsed_both"] == a["parsed_both"] == 2
    assert b["ece_both"] == pytest.approx((0.1 + 0.3) / 2)
    assert a["ece_both"] == pytest.approx((0.2 + 0.1) / 2)
    assert a["brier_both"] == pytest.approx((0.04 + 0.01) / 2)
    assert b["auroc_both"] == a["auroc_both"] == 1.0


def test_reliability_diagram_is_written(tmp_path):
    out = C.plot_reliability({"before": ([0.9, np.nan, 0.2], [1, 0, 0]),
                              "after": ([np.nan, np.nan, np.nan], [1, 0, 0])},
                             tmp_path / "reliability.png", title="t")
    assert out.exists() and out.stat().st_size > 5000
    assert not math.isnan(C.ece([0.9, 0.2], [1, 0]))
