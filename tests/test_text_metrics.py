"""ROUGE-L / BLEU / METEOR equal their libraries (rouge-score, sacrebleu, nltk) to 1e-6 on
seeded random pairs built to hit the tokenisers' corners (case, punctuation glued to words,
decimals and thousands separators, dashes after digits, HTML entities, non-ASCII letters,
inflected forms for the stemmers, repeated words for the alignments), plus a few hand cases."""
import random
from types import SimpleNamespace

import pytest

from align_jax.rewards.text_metrics import (lcs_length, meteor, porter_stem, rouge_l,
                                            sentence_bleu, word_tokens, wordnet_available)

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
sacrebleu = pytest.importorskip("sacrebleu")
nltk_meteor = pytest.importorskip("nltk.translate.meteor_score")

WORDS = ("the a of and is are was were to in on at it that this cat cats dog dogs run runs "
         "running ran runner happy happily happiness generous generously generalization "
         "connect connected connection connecting university universe agreed agreement big "
         "large car automobile quick fast study studies studying dying lying fly flies "
         "Paris paris PARIS U.S. e.g. 3.14 1,000 2-3 10-20 x-ray don't it's café naïve "
         "İstanbul Über straße 東京 &quot; &amp; &lt;b&gt; <skipped> 50% $5 #1 @me a/b").split()
PUNCT = list(",.!?;:()[]{}\"'-—…") + ["--", "...", "-\n", "\n"]
SYNONYMS = [["big", "large"], ["car", "automobile", "auto"], ["quick", "fast", "speedy"],
            ["happy", "glad", "happi"], ["run", "sprint", "test_case"]]


def _sentence(rng: random.Random, words=WORDS) -> str:
    out = []
    for _ in range(rng.randint(0, 35)):
        w = rng.choice(words) if rng.random() < 0.85 else rng.choice(PUNCT)
        w = rng.choice([w, w, w.lower(), w.upper(), w.title()])
        sep = rng.choice([" ", " ", " ", "", "  ", "\t"]) if out else ""
        out.append(sep + w)
    return "".join(out) + rng.choice(["", "", ".", " .", "  ", "\n"])


def _perturb(rng: random.Random, s: str, words=WORDS) -> str:
    """A reference sharing much of the candidate: words dropped, swapped, replaced, recased."""
    toks = s.split(" ")
    for _ in range(rng.randint(0, 6)):
        if not toks:
            break
        i = rng.randrange(len(toks))
        op = rng.random()
        if op < 0.3:
            del toks[i]
        elif op < 0.6:
            toks[i] = rng.choice(words)
        elif op < 0.8:
            j = rng.randrange(len(toks))
            toks[i], toks[j] = toks[j], toks[i]
        else:
            toks[i] = toks[i].upper()
    return " ".join(toks)


def _pairs(n=300, seed=0, words=WORDS):
    rng = random.Random(seed)
    pairs = []
    for k in range(n):
        c = _sentence(rng, words)
        pairs.append((c, _perturb(rng, c, words) if k % 3 else _sentence(rng, words)))
    pairs += [("", ""), ("", "a b"), ("a b", ""), ("...", "!!"), ("the cat", "the cat")]
    return pairs


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_l_equals_rouge_score(stem):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    scores = []
    for c, r in _pairs(seed=1 + stem):
        want = scorer.score(r, c)["rougeL"].fmeasure
        assert abs(rouge_l(c, r, stem=stem) - want) <= 1e-6, (c, r)
        scores.append(want)
    assert 0.2 < sum(s > 0.5 for s in scores) / len(scores) < 0.9  # the range is covered


def test_bleu_equals_sacrebleu():
    scores = []
    for c, r in _pairs(seed=3):
        want = sacrebleu.sentence_bleu(c, [r]).score / 100
        assert abs(sentence_bleu(c, r) - want) <= 1e-6, (c, r)
        scores.append(want)
    assert 0.2 < sum(s > 0.3 for s in scores) / len(scores) < 0.9


class _FakeWordNet:
    """A WordNet reader with a few synonym sets (nltk's stage only calls synsets/lemmas/name)."""

    def __init__(self, groups):
        self.groups = groups

    def synsets(self, word):
        lemma = lambda n: SimpleNamespace(name=lambda: n)
        return [SimpleNamespace(lemmas=lambda g=g: [lemma(n) for n in g])
                for g in self.groups if word in g]


@pytest.mark.parametrize("wordnet", ["none", "fake"])
def test_meteor_equals_nltk(wordnet):
    """Exact + stem stages (WordNet off), and the synonym stage on a stand-in WordNet."""
    wn = _FakeWordNet(SYNONYMS if wordnet == "fake" else [])
    # with synonyms: a vocabulary where most words have one (and stems/duplicates collide)
    words = WORDS if wordnet == "none" else [w for g in SYNONYMS for w in g] + WORDS[:12]
    scores = []
    for c, r in _pairs(seed=4, words=words):
        want = nltk_meteor.meteor_score([word_tokens(r)], word_tokens(c), wordnet=wn)
        got = meteor(c, r, wordnet=wn if wordnet == "fake" else None)
        assert abs(got - want) <= 1e-6, (c, r)
        scores.append(want)
    assert 0.2 < sum(s > 0.5 for s in scores) / len(scores) < 0.9


@pytest.mark.skipif(not wordnet_available(), reason="no WordNet copy installed: synonyms off")
def test_meteor_default_equals_nltk_with_installed_wordnet():
    for c, r in _pairs(n=50, seed=5):
        assert abs(meteor(c, r) - nltk_meteor.meteor_score([word_tokens(r)], word_tokens(c))) <= 1e-6


C = "The cat sat on the mat."
R = "the cat is on the mat"


def test_hand_cases():
    # ROUGE-L: LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 -> F = 5/6
    assert rouge_l(C, R) == pytest.approx(5 / 6)
    assert rouge_l("A b, C d", "b d a") == pytest.approx(4 / 7)  # LCS 2: P 2/4, R 2/3
    assert rouge_l("", R) == 0.0 and rouge_l("dog", "cat") == 0.0
    assert rouge_l("running dogs", "run dog", stem=True) == 1.0
    # BLEU (13a, case-sensitive): identical -> 1, no shared token -> 0, case matters
    assert sentence_bleu(R, R) == pytest.approx(1.0)
    assert sentence_bleu("dog", "cat") == 0.0 and sentence_bleu("", R) == 0.0
    assert sentence_bleu("The Cat", "the cat") == 0.0
    # METEOR: exact matches the/cat/on/the/mat, 2 chunks; P = 5/7, R = 5/6 (the "." counts)
    p, r = 5 / 7, 5 / 6
    want = p * r / (0.9 * p + 0.1 * r) * (1 - 0.5 * (2 / 5) ** 3)
    assert meteor(C, R, wordnet=None) == pytest.approx(want)
    # stem stage: running~runs (run), dogs~dog (dog); m = 2 in 2 chunks (crossed order)
    want = (2 / 3) / (0.9 + 0.1 * 2 / 3) * 0.5
    assert meteor("running dogs", "the dog runs", wordnet=None) == pytest.approx(want)
    assert meteor("", R) == 0.0 and meteor("dog", "cat", wordnet=None) == 0.0
    assert porter_stem("generously") == "gener"  # NLTK's extensions, not Porter (1980)


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
