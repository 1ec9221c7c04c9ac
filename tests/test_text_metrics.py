"""ROUGE-L / BLEU / METEOR / Porter stemmer on hand-computed cases."""
import math
import random

import pytest

from align_jax.rewards.text_metrics import (lcs_length, meteor, porter_stem, rouge_l,
                                            sentence_bleu)

C = "The cat sat on the mat."
R = "the cat is on the mat"


def test_rouge_l_hand_cases():
    # c = the cat sat on the mat / r = the cat is on the mat ("." dropped, lowercased)
    # LCS = the cat on the mat = 5 → P = R = 5/6 → F = 5/6
    assert rouge_l(C, R) == pytest.approx(5 / 6)
    # c = a b c d, r = b d a → LCS = "b d" = 2 → P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    assert rouge_l("A b, C d", "b d a") == pytest.approx(4 / 7)
    assert rouge_l("", R) == 0.0 and rouge_l("dog", "cat") == 0.0


def test_lcs_bit_parallel_equals_dp():
    def dp(a, b):
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
        return t[-1][-1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]  # > 64 bits too
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == dp(a, b)


def test_bleu_hand_cases():
    # tokens c = the cat sat on the mat . (7), r = the cat is on the mat (6)
    # 1-grams: the×2 cat on mat match, sat . don't → 5/7
    # 2-grams: the-cat, on-the, the-mat → 3/6; 3-grams: on-the-mat → 1/5
    # 4-grams: none of 4 → smoothed 0.1/4; |c| = 7 > |r| = 6 → BP = 1
    want = (5 / 7 * 3 / 6 * 1 / 5 * 0.1 / 4) ** 0.25
    assert sentence_bleu(C, R) == pytest.approx(want)
    # brevity: c = the cat (2), r = 6 tokens; p1 = p2 = 1, no 3/4-grams → 0.1 each,
    # BP = exp(1 − 6/2)
    want = math.exp(-2) * (1 * 1 * 0.1 * 0.1) ** 0.25
    assert sentence_bleu("the cat", R) == pytest.approx(want)
    # clipping: "the" ×4 vs ref with one "the" → p1 = 1/4; p2,p3,p4 smoothed 0.1/3, 0.1/2, 0.1/1
    want = (1 / 4 * 0.1 / 3 * 0.1 / 2 * 0.1 / 1) ** 0.25
    assert sentence_bleu("the the the the", "the cat") == pytest.approx(want)
    assert sentence_bleu(R, R) == pytest.approx(1.0)
    assert sentence_bleu("dog", "cat") == 0.0 and sentence_bleu("", R) == 0.0


def test_meteor_hand_cases():
    # c = the cat sat on the mat . / r = the cat is on the mat : exact matches
    # the-the, cat-cat, on-on, the-the, mat-mat → m = 5; chunks: [the cat] [on the mat] = 2
    # P = 5/7, R = 5/6, Fmean = PR / (0.9P + 0.1R), penalty = 0.5·(2/5)^3
    p, r = 5 / 7, 5 / 6
    want = p * r / (0.9 * p + 0.1 * r) * (1 - 0.5 * (2 / 5) ** 3)
    assert meteor(C, R) == pytest.approx(want)
    # stem stage: running~runs (run), dogs~dog (dog); m = 2 in 2 chunks (crossed order)
    # P = 1, R = 2/3, Fmean = (2/3)/(0.9 + 0.1·2/3), penalty = 0.5·(2/2)^3 = 0.5
    want = (2 / 3) / (0.9 + 0.1 * 2 / 3) * 0.5
    assert meteor("running dogs", "the dog runs") == pytest.approx(want)
    # identical 3 words: one chunk → 1 − 0.5·(1/3)^3
    assert meteor("a b c", "a b c") == pytest.approx(1 - 0.5 / 27)
    assert meteor("", R) == 0.0 and meteor("dog", "cat") == 0.0


@pytest.mark.parametrize("word,stem", [  # examples from Porter (1980)
    ("caresses", "caress"), ("ponies", "poni"), ("cats", "cat"), ("feed", "feed"),
    ("agreed", "agre"), ("plastered", "plaster"), ("motoring", "motor"), ("sing", "sing"),
    ("conflated", "conflat"), ("hopping", "hop"), ("falling", "fall"), ("filing", "file"),
    ("happy", "happi"), ("sky", "sky"), ("relational", "relat"), ("conditional", "condit"),
    ("rational", "ration"), ("digitizer", "digit"), ("vietnamization", "vietnam"),
    ("hopefulness", "hope"), ("formative", "form"), ("electrical", "electr"),
    ("adjustment", "adjust"), ("adoption", "adopt"), ("probate", "probat"), ("rate", "rate"),
    ("controll", "control"), ("roll", "roll"), ("generalizations", "gener")])
def test_porter_stemmer(word, stem):
    assert porter_stem(word) == stem
