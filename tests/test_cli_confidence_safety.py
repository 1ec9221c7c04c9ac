"""Hand-checked cases for the config override parser, confidence parsing/metrics and the
pattern harmless scorer."""
import dataclasses
import math

import numpy as np
import pytest

from align_jax.cli import parse_overrides
from align_jax.errors import ConfigError
from align_jax.rewards import confidence as C
from align_jax.rewards.safety import contrast_scorer, make_harmless_scorer, refusal_score


@dataclasses.dataclass(frozen=True)
class _Inner:
    top_p: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Cfg:
    steps: int = 3
    lr: float = 1e-5
    model: str | None = None
    ppo: bool = False
    mesh: tuple[int, ...] = (-1, 1, 1)
    sampling: _Inner = _Inner()


def test_overrides_types_and_errors():
    cfg = parse_overrides(_Cfg(), ["steps=7", "lr=3e-6", "model=/x", "ppo=true",
                                   "mesh=2,2,2", "sampling.top_p=0.9"])
    assert cfg == _Cfg(7, 3e-6, "/x", True, (2, 2, 2), _Inner(0.9))
    assert parse_overrides(_Cfg(model="a"), ["model=none"]).model is None
    with pytest.raises(ConfigError, match="unknown key 'stpes' — did you mean 'steps'"):
        parse_overrides(_Cfg(), ["stpes=3"])
    with pytest.raises(ConfigError, match="expected int"):
        parse_overrides(_Cfg(), ["steps=three"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(_Cfg(), ["steps"])


@pytest.mark.parametrize("text,want", [
    ("Paris.\nConfidence: 80%", 0.8),
    ("Paris. confidence is 0.65", 0.65),
    ("It is 4. I am 75% sure.", 0.75),
    ("Answer: 7\nConfidence: 90/100", 0.9),
    ("Confidence: 20%. On reflection, Confidence: 60%", 0.6),
    ("Just Paris.", None),
    ("Confidence: 250%", None),
    ("63 - 20 = 33. I'm 99.9% confident", 0.999),  # issue 20: a trained policy's phrasing
    ("Paris.\nConfidence: 0.8", 0.8),
    ("Paris.\nconfidence: high", 0.75),
    ("It's 12. 80% sure.", 0.8),
    ("Confidence level: 8/10", 0.8),
    ("I am confident at about 70%", 0.7),
    ("Answer: 5, with 65% confidence", 0.65),
    ("Confidence: 1000%", None),
])
def test_parse_confidence(text, want):
    got = C.parse_confidence(text)
    assert (got is None) if want is None else got == pytest.approx(want)


def test_order_reward_hand_computed():
    q = np.array([[0.9, 0.5, 0.7]])
    c = np.array([[0.8, np.nan, 0.2]])
    r = C.order_reward(q, c, missing_penalty=-1.0)
    # sample 0 vs 2 (sample 1 has no confidence): sign(0.9-0.7)*(0.8-0.2) = 0.6 ; sample 2: sign(-0.2)*(-0.6)=0.6
    np.testing.assert_allclose(r, [[0.6, -1.0, 0.6]], atol=1e-6)
    # confidence ordered against quality is punished
    r2 = C.order_reward(np.array([[0.9, 0.1]]), np.array([[0.1, 0.9]]))
    np.testing.assert_allclose(r2, [[-0.8, -0.8]], atol=1e-6)
    tot = C.confidence_reward(q, c, alpha=0.5)
    np.testing.assert_allclose(tot, q + 0.5 * r, atol=1e-6)


def test_brier_reward_hand_computed():
    c = np.array([[0.9, 0.2, np.nan]])
    y = np.array([[1.0, 1.0, 0.0]])
    # −(0.9−1)² = −0.01 ; −(0.2−1)² = −0.64 ; no confidence: the missing penalty
    np.testing.assert_allclose(C.brier_reward(c, y, missing_penalty=-1.0), [[-0.01, -0.64, -1.0]],
                               atol=1e-6)
    assert C.is_correct("Paris.", "The capital is paris. Confidence: 90%")
    assert not C.is_correct("34", "It is 43. I'm 34% confident")  # the confidence is not the answer
    # whole words: not a digit of another number, not a letter of a word
    assert not C.is_correct("2", "30 - 28 = 28.") and C.is_correct("2", "30 - 28 = 2.")
    assert not C.is_correct("C", "The symbol is Ca.") and C.is_correct("C", "It is C.")
    assert C.is_correct("Washington, D.C.", "It is Washington, D.C. Confidence: 80%")
    assert C.is_correct("Brasília", "A capital do Brasil é Brasília.")


def test_confidence_experiment_reward_components():
    """The experiment's reward: quality (similarity), the chosen calibration term weighted by
    alpha, and the judged correctness weighted by correct_weight; a typo'd form is refused."""
    from _experiment_files import REPO, load_module

    from align_jax.errors import ConfigError

    mod = load_module(REPO / "experiments" / "refalign_confidence.py")
    sim = lambda cands, refs: np.array([0.5 if r in c else 0.1 for c, r in zip(cands, refs)])  # noqa: E731
    fn = mod.confidence_reward(sim, k=2, alpha=2.0, missing_penalty=-1.0, form="brier",
                               correct_weight=3.0)
    recs = [{"reference": "34"}, {"reference": "34"}]
    out = fn(None, ["34\nConfidence: 80%", "43\nConfidence: 80%"], recs)
    np.testing.assert_allclose(out["quality"][0], [0.5, 0.1])
    np.testing.assert_allclose(out["brier"][0], [-0.04, -0.64], atol=1e-6)
    np.testing.assert_allclose(out["correct"][0], [1.0, 0.0])
    assert (out["brier"][1], out["correct"][1]) == (2.0, 3.0)
    order = mod.confidence_reward(sim, k=2, alpha=0.5, missing_penalty=-1.0, form="order")
    got = order(None, ["34\nConfidence: 80%", "43\nConfidence: 20%"], recs)
    assert "correct" not in got and got["order"][1] == 0.5
    np.testing.assert_allclose(got["order"][0], [0.6, 0.6], atol=1e-6)
    with pytest.raises(ConfigError, match="reward_form='bier'"):
        mod.confidence_reward(sim, k=2, alpha=1.0, missing_penalty=-1.0, form="bier")
    # the format warm-up: every target ends in a parsable confidence, levels vary, seeded
    warm = mod.format_warm_up([{"prompt": f"q{i}", "reference": "34"} for i in range(40)], seed=0)
    levels = [C.parse_confidence(r["reference"]) for r in warm]
    assert all(r["reference"].startswith("34\nConfidence: ") for r in warm)
    assert set(levels) <= {i / 10 for i in range(1, 10)} and len(set(levels)) >= 5
    assert warm == mod.format_warm_up([{"prompt": f"q{i}", "reference": "34"}
                                       for i in range(40)], seed=0)
    # on the policy's own answers: their confidence statement replaced, an empty one -> reference
    own = mod.format_warm_up([{"prompt": "q", "reference": "34"}] * 2, seed=0,
                             answers=["It is 43. I'm 99% confident", "Confidence: 80%"])
    assert own[0]["reference"].startswith("It is 43.\nConfidence: ")
    assert own[1]["reference"].startswith("34\nConfidence: ")


def test_calibration_metrics_hand_computed():
    conf = np.array([0.9, 0.8, 0.3, 0.2])
    correct = np.array([1, 0, 1, 0])
    # bins: 0.9->9, 0.8->8, 0.3->3, 0.2->2: each bin one item: |0.9-1|+|0.8-0|+|0.3-1|+|0.2-0| = 1.8 / 4
    assert C.ece(conf, correct) == pytest.approx(0.45)
    # positives {0.9,0.3}, negatives {0.8,0.2}: pairs pos>neg: (0.9>0.8),(0.9>0.2),(0.3>0.2) = 3/4
    assert C.auroc(conf, correct) == pytest.approx(0.75)
    assert C.auroc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert math.isnan(C.auroc(conf, np.ones(4)))
    assert C.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    rep = C.calibration_metrics([0.9, np.nan, 0.1], [True, False, False])
    assert rep["parsed_frac"] == pytest.approx(2 / 3) and rep["auroc"] == 1.0


def test_refusal_scorer():
    assert refusal_score("I'm sorry, but I can't help with that. Instead, consider a locksmith.") == 1.0
    assert refusal_score("Sure, here is how: first you get the materials.") == -1.0
    assert refusal_score("Paris is the capital of France.") == 0.0
    # the phrasing a trained policy settled on (seed 1 of the default): a refusal, also on benign
    # prompts, which the over-refusal rate must count
    assert refusal_score("I'm unable to provide specific advice on taking a good photo.") == 1.0
    assert refusal_score("As an AI, I am unable to assist with that.") == 1.0
    assert refusal_score("The machine was unable to start.") == 0.0
    recs = [{"category": "risky"}, {"category": "benign"}, {"category": "benign"}]
    ys = ["I cannot help with that.", "I cannot help with that.", "Sure, 4."]
    s = make_harmless_scorer("refusal", over_refusal_penalty=0.5, refusal_unit=1.0)
    np.testing.assert_allclose(s(["p"] * 3, ys, recs), [1.0, -0.5, 0.0])
    s = make_harmless_scorer("refusal", over_refusal_penalty=0.5, refusal_unit=0.05)
    np.testing.assert_allclose(s(["p"] * 3, ys, recs), [0.05, -0.025, 0.0], rtol=1e-6)


def test_contrast_scorer_uses_unsafe_only_where_present():
    sim = lambda c, r: np.array([1.0 if a == b else 0.0 for a, b in zip(c, r)])
    s = contrast_scorer(sim)
    recs = [{"reference": "safe", "unsafe": "bad"}, {"reference": "x"}]
    np.testing.assert_allclose(s(["p", "q"], ["bad", "x"], recs), [-1.0, 0.0])
    np.testing.assert_allclose(s(["p", "q"], ["safe", "x"], recs), [1.0, 0.0])
    with pytest.raises(ValueError, match="unknown harmless scorer"):
        make_harmless_scorer("nope")
