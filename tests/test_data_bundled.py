"""Bundled datasets: load by name, promised sizes/splits, safety invariants, arithmetic answers
checked by evaluation, and the shipped files are exactly the generator's output."""
import re
from collections import Counter

import pytest

from align_jax.data import (
    BUNDLED_FORMATS,
    PreferencePair,
    PromptReference,
    RankedList,
    UnpairedExample,
    bundled_path,
    load_bundled,
)
from align_jax.data.bundled._safety_source import SELF_HARM_UNSAFE, UNSAFE_TEMPLATES
from align_jax.data.bundled.generate import write_all
from align_jax.rewards.confidence import is_correct

SIZES = {"safety": (200, 260), "preference": (190, 220), "ranked": (95, 110),
         "confidence_qa": (240, 270), "kto": (140, 170)}
TYPES = {"safety": PromptReference, "preference": PreferencePair, "ranked": RankedList,
         "confidence_qa": PromptReference, "kto": UnpairedExample}


@pytest.mark.parametrize("name", sorted(BUNDLED_FORMATS))
def test_loads_with_promised_size_and_splits(name):
    data = load_bundled(name)
    lo, hi = SIZES[name]
    assert lo <= len(data) <= hi and all(isinstance(x, TYPES[name]) for x in data)
    n_eval = len(load_bundled(name, split="eval"))
    assert len(load_bundled(name, split="train")) + n_eval == len(data)
    # ~85/15; confidence_qa holds 150 of 252 out (an AUROC on 50 answers spanned ±0.15)
    lo, hi = (0.58, 0.61) if name == "confidence_qa" else (0.10, 0.20)
    assert lo <= n_eval / len(data) <= hi
    if name != "kto":  # kto holds each prompt twice (desirable + undesirable)
        assert len({str(x.prompt) for x in data}) == len(data), "duplicate prompts"


def test_safety_invariants():
    data = load_bundled("safety")
    risky = load_bundled("safety", category="risky")
    benign = load_bundled("safety", category="benign")
    assert len(risky) + len(benign) == len(data) and 0.55 <= len(risky) / len(data) <= 0.65
    assert {x.meta["split"] for x in risky} == {x.meta["split"] for x in benign} == {"train",
                                                                                     "eval"}
    assert all(x.unsafe for x in risky) and all(x.unsafe is None for x in benign)
    # every unsafe example is one of the generic, non-actionable templates (no real content)
    pats = [re.compile(re.escape(t).replace(r"\{task\}", r"[\w' -]+") + "$")
            for t in UNSAFE_TEMPLATES]
    assert all(any(p.match(x.unsafe) for p in pats) or x.unsafe in SELF_HARM_UNSAFE
               for x in risky)
    # short answers (1-3 sentences) so a small model can learn them on CPU
    assert all(len(re.findall(r"[.!?](\s|$)", x.reference)) <= 3 for x in data)
    assert all(len(x.reference.split()) <= 45 for x in data)
    # eval holds out whole risky topics: no train prompt shares the eval refusal text
    train_refs = {x.reference.split(". ", 1)[1] for x in risky if x.meta["split"] == "train"}
    assert not any(x.reference.split(". ", 1)[1] in train_refs
                   for x in risky if x.meta["split"] == "eval")


def _arith(prompt):
    nums = [int(n) for n in re.findall(r"\d+", prompt)]
    if "Subtract" in prompt:
        return nums[1] - nums[0]
    if any(w in prompt for w in ("+", "add", "Add")):
        return nums[0] + nums[1]
    if any(w in prompt for w in ("-", "minus")):
        return nums[0] - nums[1]
    return nums[0] * nums[1]


def test_arithmetic_answers_are_correct():
    qa = [x for x in load_bundled("confidence_qa") if x.meta["topic"] == "arithmetic"]
    assert len(qa) >= 50 and all(int(x.reference) == _arith(x.prompt) for x in qa)
    for p in load_bundled("preference"):
        if p.meta["topic"] == "arithmetic":
            c = _arith(p.prompt)
            assert p.chosen.rstrip(".").endswith(f" {c}")
            assert not p.rejected.rstrip(".").endswith(f" {c}")


def test_confidence_held_out_is_balanced_and_judgeable():
    held = load_bundled("confidence_qa", split="eval")
    assert Counter(x.meta["topic"] for x in held) == {"arithmetic": 50, "capitals": 50,
                                                     "science": 50}
    # correctness is the reference inside the answer: one inside its own question (an answer
    # that repeats the question) would always be judged right
    assert not [x.prompt for x in load_bundled("confidence_qa")
                if is_correct(x.reference, str(x.prompt))]


def test_ranked_and_kto_structure():
    for r in load_bundled("ranked"):
        assert 3 <= len(r.responses) <= 4 and len(r.scores) == len(r.responses)
        assert sorted(r.scores).count(max(r.scores)) == 1  # a unique best response
    assert {len(r.responses) for r in load_bundled("ranked")} == {3, 4}
    kto = load_bundled("kto")
    assert sum(x.label for x in kto) == len(kto) // 2
    pref = {p.meta["id"]: p for p in load_bundled("preference")}
    for x in kto:
        pair = pref[x.meta["pair_id"]]
        assert x.completion == (pair.chosen if x.label else pair.rejected)


def test_shipped_files_are_the_generator_output(tmp_path):
    for name, path in write_all(tmp_path).items():
        assert path.read_bytes() == bundled_path(name).read_bytes(), name
