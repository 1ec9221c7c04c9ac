"""ALaRM reward pieces (align_jax/rewards/{alarm,aspects,consistency}.py): hand-computed cases."""
import math

import numpy as np
import pytest

from align_jax.errors import ConfigError, DataError
from align_jax.rewards.alarm import (
    HOLISTIC_STATS_FILE, PRESETS, AlarmConfig, HolisticStats, alarm_rewards,
    char_to_token_positions, pack_aspect, place_aspect, preset, sentence_aspect, sequence_aspect,
    sigmoid_shape, token_aspect, token_char_ends)
from align_jax.rewards.aspects import (
    count_syllables, distinct_n, flesch_kincaid_grade, length_scorer, make_aspect_scorer, negated,
    per_sentence_scores, readability_scorer, references_from_records, repetition_scorer,
    reward_model_scorer, sentence_spans, similarity_scorer)
from align_jax.rewards.consistency import agreement_rate, same_prompt_pairs, select_aspects
from align_jax.rewards.similarity import make_similarity

LN3 = math.log(3.0)  # σ(ln 3) = 0.75, σ(−ln 3) = 0.25

# Response tokens sit anywhere in the [B, T] layout (prompt first, padding after).
MASK = np.array([[0, 1, 1, 1, 1, 0],   # 4 tokens, first 1, last 4
                 [0, 0, 1, 1, 1, 1],   # 4 tokens, first 2, last 5
                 [1, 1, 0, 0, 0, 0],   # 2 tokens: the short-response rule
                 [0, 1, 1, 1, 0, 0]])  # 3 tokens, first 1, last 3
H = np.array([1.0, 0.2, 3.0, 0.6], np.float32)  # z-scores; τ = 0.6 → rows 0 and 3 pass (≥)
SEQ = sequence_aspect(np.array([0.0, LN3, 0.0, 0.0]))  # σ → 0.5, 0.75, 0.5, 0.5
# per-sentence aspect; row 3's position 5 is past its 3 tokens → its last token
DENSE = pack_aspect([[LN3, 0.0], [0.0], [1.0], [-LN3]], [[0, 2], [1], [0], [5]])


def _rows(*rows):
    return np.array(rows, np.float32)


EXPECTED = {
    "hierarchical": _rows([0, .75, 0, .5, 5.5, 0], [0, 0, 0, 0, 0, 1.0],
                          [0, -50, 0, 0, 0, 0], [0, 0, 0, 3.75, 0, 0]),
    "holistic_only": _rows([0, 0, 0, 0, 5.0, 0], [0, 0, 0, 0, 0, 1.0],
                           [0, -50, 0, 0, 0, 0], [0, 0, 0, 3.0, 0, 0]),
    "aspect_only": _rows([0, .75, 0, .5, .5, 0], [0, 0, 0, .5, 0, .75],
                         [0, -50, 0, 0, 0, 0], [0, 0, 0, .75, 0, 0]),
    "weighted_sum": _rows([0, .75, 0, .5, 5.5, 0], [0, 0, 0, .5, 0, 1.75],
                          [0, -50, 0, 0, 0, 0], [0, 0, 0, 3.75, 0, 0]),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_hierarchy_and_ablations(mode):
    # row 0: h ≥ τ → aspects + 5·1 on the last token; row 1: h < τ → 5·0.2 only (aspects dropped);
    # row 2: ≤ 2 tokens → −10·w_h; row 3: h = τ passes, past-the-end sentence → last token
    out = alarm_rewards(H, [SEQ, DENSE], MASK, preset("long_form_qa", mode=mode))
    np.testing.assert_allclose(out.token_rewards, EXPECTED[mode], atol=1e-6)
    np.testing.assert_allclose(out.total, EXPECTED[mode].sum(1), atol=1e-5)


def test_hierarchy_metrics():
    cfg = PRESETS["long_form_qa"]
    out = alarm_rewards(H, [SEQ, DENSE], MASK, cfg=cfg)  # jitted; cfg static
    np.testing.assert_allclose(out.token_rewards, EXPECTED["hierarchical"], atol=1e-6)
    s, n = out.metrics["alarm/above_tau"]
    assert (float(s), float(n)) == (2.0, 4.0)  # rows 0 and 3 (row 2 is short)
    assert float(out.metrics["alarm/short"][0]) == 1.0


def test_per_aspect_weights_scales_and_shifts():
    # dense aspect weighted 2 with σ(2·(x − 1)): row 0 scores ln3, 0 → σ(2ln3 − 2), σ(−2)
    cfg = AlarmConfig(tau=0.6, w_h=5.0, aspect_weights=(1.0, 2.0), sigmoid_scales=(1.0, 2.0),
                      sigmoid_shifts=(0.0, 1.0))
    out = np.asarray(alarm_rewards(H, [SEQ, DENSE], MASK, cfg).token_rewards)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert out[0, 1] == pytest.approx(2 * sig(2 * LN3 - 2), abs=1e-6)
    assert out[0, 3] == pytest.approx(2 * sig(-2), abs=1e-6)
    assert out[0, 4] == pytest.approx(5.0 + 0.5, abs=1e-6)
    with pytest.raises(ConfigError, match="2 values for 1 aspects"):
        alarm_rewards(H, [SEQ], MASK, cfg)


def test_unshaped_and_errors():
    out = alarm_rewards(H, [SEQ], MASK, AlarmConfig(shape=False, mode="aspect_only"))
    assert float(out.token_rewards[1, 5]) == pytest.approx(LN3)  # raw score, not σ
    with pytest.raises(ConfigError, match="valid names.*aspect_only"):
        AlarmConfig(mode="hierarchy")
    with pytest.raises(ConfigError, match="needs at least one aspect"):
        alarm_rewards(H, [], MASK, AlarmConfig())
    with pytest.raises(ConfigError, match="valid names"):
        preset("summarisation")


def test_presets():
    qa, mt = PRESETS["long_form_qa"], PRESETS["mt"]
    assert (qa.tau, qa.w_h, mt.tau, mt.w_h) == (0.6, 5.0, 0.5, 3.0)
    for c in (qa, mt):
        assert (c.mode, c.short_len, c.short_penalty, c.shape) == ("hierarchical", 2, -10.0, True)
    # MT's short penalty is −10·3
    out = alarm_rewards(H, [SEQ], MASK, mt)
    assert float(out.token_rewards[2, 1]) == -30.0


def test_sigmoid_shaping_values():
    np.testing.assert_allclose(sigmoid_shape([0.0, LN3, -LN3]), [0.5, 0.75, 0.25], atol=1e-6)
    # scale 2, shift 1: x = 1 + ln3/2 → σ(ln 3)
    assert float(sigmoid_shape(1 + LN3 / 2, scale=2.0, shift=1.0)) == pytest.approx(0.75)
    # padding entries contribute 0 even though σ(0) = 0.5
    one = place_aspect(pack_aspect([[0.0], []], [[0], []]), np.ones((2, 3)))
    np.testing.assert_allclose(one, [[0.5, 0, 0], [0, 0, 0]])


class _PieceTokenizer:
    """decode = concatenation of pieces; id 5 is a special token (EOS)."""
    pieces = ["Hi", " there", ".", " Bye", " now", "<eos>"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 5))


def test_placement_at_sentence_ends():
    ids = [0, 1, 2, 3, 4, 2, 5]  # "Hi there. Bye now." + EOS
    ends = token_char_ends(_PieceTokenizer(), ids)
    np.testing.assert_array_equal(ends, [2, 8, 9, 13, 17, 18, 18])
    text = _PieceTokenizer().decode(ids)
    assert sentence_spans(text) == [(0, 9), (10, 18)]
    scores, char_ends = per_sentence_scores(text, lambda s: float(len(s)))
    np.testing.assert_array_equal(char_ends, [9, 18])
    pos = char_to_token_positions(char_ends, ends)
    np.testing.assert_array_equal(pos, [2, 5])  # the "." tokens, not EOS
    assert char_to_token_positions([25], ends).tolist() == [-1]  # past the tokens → last
    # into a layout where the response starts at column 2 (prompt before it)
    mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1, 0]])
    r = place_aspect(pack_aspect([scores], [pos]), mask, shaped=False)
    np.testing.assert_allclose(r, [[0, 0, 0, 0, 9.0, 0, 0, 8.0, 0, 0]])


def test_sentence_aspect_scores_every_sentence_in_one_call():
    seen = []

    def scorer(prompts, sentences):  # any aspect scorer; here: characters per sentence
        seen.append((list(prompts), list(sentences)))
        return [len(s) for s in sentences]

    a = sentence_aspect(_PieceTokenizer(), ["p", "q", "r"],
                        [[0, 1, 2, 3, 4, 2, 5], [3, 4], [2]], scorer)
    assert seen == [(["p", "p", "q"], ["Hi there.", "Bye now.", "Bye now"])]
    np.testing.assert_allclose(a.scores, [[9, 8], [7, 0], [0, 0]])
    np.testing.assert_array_equal(np.where(a.valid, a.positions, -9), [[2, 5], [1, -9], [-9, -9]])


def test_last_token_and_token_level_placement():
    mask = np.array([[0, 1, 1, 0], [1, 1, 1, 1]])
    r = place_aspect(sequence_aspect([2.0, 3.0]), mask, shaped=False)
    np.testing.assert_allclose(r, [[0, 0, 2.0, 0], [0, 0, 0, 3.0]])
    tok = token_aspect(np.array([[9, 1, 2, 9], [1, 2, 3, 4]], np.float32), mask)
    np.testing.assert_allclose(place_aspect(tok, mask, shaped=False),
                               [[0, 1, 2, 0], [1, 2, 3, 4]])


# ---------------------------------------------------------------- consistency selection
GROUPS = ["A", "A", "A", "B", "B", "C", "C", "D", "D"]
HOL = [3, 2, 1, 5, 5, 0, 1, 0, 1]
ASP = [1, 1, 0, 1, 2, 0, 2, 3, 2]
# A: (0,1) aspect tie → ½, (0,2) agree, (1,2) agree; B: holistic tie → left out;
# C: agree; D: disagree → 3.5 / 5


def test_agreement_rate_with_ties():
    assert same_prompt_pairs(["x", "y", "x"])[0].tolist() == [0]
    a = agreement_rate(HOL, ASP, GROUPS)
    assert (a.rate, a.pairs, a.aspect_ties, a.holistic_ties) == (pytest.approx(0.7), 5, 1, 1)
    assert agreement_rate(HOL, ASP, GROUPS, aspect_ties="disagree").rate == pytest.approx(0.6)
    skip = agreement_rate(HOL, ASP, GROUPS, aspect_ties="skip")
    assert (skip.rate, skip.pairs) == (pytest.approx(0.75), 4)
    # tie_tol turns small differences into ties: D's |da| = 1 → tie → ½
    assert agreement_rate(HOL, ASP, GROUPS, tie_tol=1.0).rate == pytest.approx(0.5)
    assert math.isnan(agreement_rate([1, 2], [1, 2], ["a", "b"]).rate)  # no same-prompt pair


def test_consistency_selection_picks_the_most_consistent():
    cands = {"len": ASP, "good": [2 * x for x in HOL], "bad": [-x for x in HOL]}
    chosen, report = select_aspects(HOL, cands, GROUPS)
    assert chosen == ["good"]
    assert {k: v["agreement"] for k, v in report.items()} == pytest.approx(
        {"len": 0.7, "good": 1.0, "bad": 0.0})
    assert [report[k]["rank"] for k in ("good", "len", "bad")] == [1, 2, 3]
    assert select_aspects(HOL, cands, GROUPS, top_n=2)[0] == ["good", "len"]


# ---------------------------------------------------------------- offline aspect scorers
def test_syllables_and_flesch_kincaid_by_hand():
    counts = {"happy": 2, "children": 2, "play": 1, "outside": 2, "they": 1, "laugh": 1,
              "the": 1, "table": 2, "make": 1, "makes": 1, "boxes": 2, "played": 1,
              "wanted": 2, "agree": 2, "yes": 1, "42": 1}
    assert {w: count_syllables(w) for w in counts} == counts
    # 6 words, 2 sentences, 2+2+1+2+1+1 = 9 syllables: 0.39·3 + 11.8·1.5 − 15.59 = 3.28
    assert flesch_kincaid_grade("Happy children play outside. They laugh.") == pytest.approx(3.28)
    # 6 words, 1 sentence, 6 syllables: 0.39·6 + 11.8 − 15.59 = −1.45
    assert flesch_kincaid_grade("The cat sat on the mat.") == pytest.approx(-1.45)
    r = readability_scorer()(["q", "q"], ["The cat sat on the mat.", "<|im_start|>x"])
    assert r[0] == pytest.approx(1.45)


def test_distinct_n_and_length_by_hand():
    # bigrams: the-cat ×2, cat-the ×2, the-dog → 3 unique / 5
    assert distinct_n("the cat The cat the dog", 2) == pytest.approx(0.6)
    assert distinct_n("the cat the cat the dog", 1) == pytest.approx(0.5)
    assert distinct_n("Yes.", 2) == 1.0
    assert repetition_scorer(2)(["p"], ["a b a b"]).tolist() == pytest.approx([2 / 3])
    assert length_scorer()(["p"], ["Hello, world! It's fine."]).tolist() == [4.0]
    assert negated(length_scorer())(["p"], ["a b"]).tolist() == [-2.0]
    with pytest.raises(ConfigError, match="valid names"):
        make_aspect_scorer("fluency")


def test_similarity_and_reward_model_aspects():
    records = [{"prompt": "p1", "reference": "the sun is a star"},
               {"prompt": [{"role": "user", "content": "p2"}], "reference": "water is wet"}]
    refs = references_from_records(records)
    sim = similarity_scorer(refs, scorer=make_similarity("rouge_l"))
    s = sim(["p1", records[1]["prompt"]], ["the sun is a star", "fire is hot"])
    assert s[0] == pytest.approx(1.0) and s[1] < 0.5
    with pytest.raises(DataError, match="no reference"):
        sim(["p3"], ["x"])
    rm = make_aspect_scorer("reward_model", rm=lambda ps, rs: [len(r) for r in rs])
    assert rm(["a", "b"], ["xy", "xyz"]).tolist() == [2.0, 3.0]
    assert reward_model_scorer(lambda ps, rs: [1.0])(["a"], ["b"]).dtype == np.float32


# ---------------------------------------------------------------- holistic normalisation
def test_holistic_stats_fixed_and_round_trip(tmp_path):
    stats = HolisticStats.fit([0.0, 2.0, 4.0])
    assert (stats.mean, stats.std, stats.count) == (2.0, pytest.approx(math.sqrt(8 / 3)), 3)
    path = stats.save(tmp_path / HOLISTIC_STATS_FILE)
    loaded = HolisticStats.load(path)
    assert loaded == stats
    # z of a new batch uses the FIXED stats, not the batch's own (which would give −1, 1)
    z = loaded.normalise(np.array([10.0, 12.0]))
    np.testing.assert_allclose(z, [8 / math.sqrt(8 / 3), 10 / math.sqrt(8 / 3)])
    with pytest.raises(ValueError, match="constant"):
        HolisticStats.fit([1.0, 1.0])
    (tmp_path / "bad.json").write_text('{"mean": 1}')
    with pytest.raises(DataError, match="bad.json"):
        HolisticStats.load(tmp_path / "bad.json")
