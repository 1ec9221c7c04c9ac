"""Regenerate the bundled datasets: ``python -m align_jax.data.bundled.generate [out_dir]``.

Deterministic (fixed seeds, no network): the shipped ``*.jsonl`` files are exactly this
script's output, which a test checks. Every file carries an ``id`` and a ``split`` ("train" /
"eval", about 6:1; confidence_qa 102 train, 150 eval). Safety holds out whole risky *topics*
for eval (every 7th topic), so eval prompts are not paraphrases of training prompts.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from align_jax.data.bundled._facts_source import (
    CAPITALS,
    CAPITALS_HELD_OUT,
    SCIENCE,
    SCIENCE_HELD_OUT,
)
from align_jax.data.bundled._safety_source import (
    BENIGN,
    OPENERS,
    RISKY_TOPICS,
    SELF_HARM_UNSAFE,
    UNSAFE_TEMPLATES,
)

EVAL_EVERY = 7  # item i goes to eval when i % 7 == 6  →  1/7 ≈ 14% eval

UNHELPFUL = ["I don't know.", "No idea, sorry.", "Can't say.", "Hard to tell."]
RUDE = ["Figure it out yourself.", "Why would you even ask that?", "Just look it up.",
        "That's a dumb question.", "I'm not going to bother explaining that.",
        "Nobody cares about that."]


def _split(i: int, every: int = EVAL_EVERY) -> str:
    return "eval" if i % every == every - 1 else "train"


def _check_unique(rows: list[dict], key: str, name: str) -> list[dict]:
    seen = set()
    for r in rows:
        k = json.dumps(r[key], sort_keys=True)
        if k in seen:
            raise ValueError(f"{name}: duplicate {key} {r[key]!r}")
        seen.add(k)
    return rows


# ---------------------------------------------------------------- safety
def build_safety() -> list[dict]:
    rows = []
    n = 0
    for t, (topic, requests, task, why, alt, opener) in enumerate(RISKY_TOPICS):
        for request in requests:
            rows.append({
                "id": f"safety-{len(rows):03d}",
                "prompt": request,
                "reference": f"{opener or OPENERS[n % len(OPENERS)]} {why} {alt}",
                "unsafe": (SELF_HARM_UNSAFE[n % len(SELF_HARM_UNSAFE)] if topic == "self_harm"
                           else UNSAFE_TEMPLATES[n % len(UNSAFE_TEMPLATES)].format(task=task)),
                "category": "risky",
                "topic": topic,
                "split": _split(t),
            })
            n += 1
    for i, (prompt, answer) in enumerate(BENIGN):
        rows.append({"id": f"safety-{len(rows):03d}", "prompt": prompt, "reference": answer,
                     "category": "benign", "topic": "general", "split": _split(i)})
    return _check_unique(rows, "prompt", "safety")


# ---------------------------------------------------------------- arithmetic helpers
_OPS = {
    "+": (["What is {a} + {b}?", "Add {a} and {b}.", "What do you get when you add {a} and {b}?"],
          lambda a, b: a + b),
    "-": (["What is {a} - {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?"],
          lambda a, b: a - b),
    "*": (["What is {a} * {b}?", "Multiply {a} by {b}.", "What is {a} times {b}?"],
          lambda a, b: a * b),
}


def _arith_items(rng: random.Random, count: int, seen: set) -> list[tuple[str, str, int, int, int]]:
    """(prompt, op, a, b, answer) with distinct prompts; ops and phrasings rotate."""
    items = []
    i = 0
    while len(items) < count:
        op = "+-*"[i % 3]
        if op == "+":
            a, b = rng.randint(10, 99), rng.randint(10, 99)
        elif op == "-":
            a = rng.randint(20, 99)
            b = rng.randint(1, a - 1)
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 19)
        templates, fn = _OPS[op]
        prompt = templates[(i // 3) % len(templates)].format(a=a, b=b)
        i += 1
        if prompt in seen:
            continue
        seen.add(prompt)
        items.append((prompt, op, a, b, fn(a, b)))
    return items


def _wrong_capital(i: int) -> str:
    country, capital, wrong = CAPITALS[i]
    return wrong or CAPITALS[(i + 7) % len(CAPITALS)][1]


_CAPITAL_Q = ["What is the capital of {c}?", "Which city is the capital of {c}?",
              "Name the capital of {c}."]


# ---------------------------------------------------------------- preference
def build_preference() -> list[dict]:
    rng = random.Random(20240601)
    rows = []
    for i, (prompt, op, a, b, c) in enumerate(_arith_items(rng, 60, set())):
        chosen = f"{a} {op} {b} = {c}." if i % 2 == 0 else f"The answer is {c}."
        kind = i % 5
        if kind < 3:
            wrong = c + (1, -2, 10)[kind]
            rejected = f"{a} {op} {b} = {wrong}." if i % 2 == 0 else f"The answer is {wrong}."
        elif kind == 3:
            rejected = UNHELPFUL[i % len(UNHELPFUL)]
        else:
            rejected = RUDE[i % len(RUDE)]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "topic": "arithmetic"})
    for i, (country, capital, _) in enumerate(CAPITALS):
        rows.append({"prompt": _CAPITAL_Q[i % 3].format(c=country),
                     "chosen": f"The capital of {country} is {capital}.",
                     "rejected": f"The capital of {country} is {_wrong_capital(i)}.",
                     "topic": "capitals"})
    for question, answer, wrong in SCIENCE:
        rows.append({"prompt": question, "chosen": f"{answer}.", "rejected": f"{wrong}.",
                     "topic": "science"})
    seen = {r["prompt"] for r in rows}
    benign = [(p, a) for p, a in BENIGN if p not in seen][:50]  # a few overlap the facts
    for i, (prompt, answer) in enumerate(benign):
        rejected = RUDE[i % len(RUDE)] if i % 2 == 0 else UNHELPFUL[i % len(UNHELPFUL)]
        rows.append({"prompt": prompt, "chosen": answer, "rejected": rejected,
                     "topic": "general"})
    rng.shuffle(rows)  # mix topics so any prefix (e.g. the KTO subset) covers all of them
    rows = [{"id": f"pref-{i:03d}", **r, "split": _split(i)} for i, r in enumerate(rows)]
    return _check_unique(rows, "prompt", "preference")


# ---------------------------------------------------------------- ranked
def _inline(answer: str) -> str:
    """Mid-sentence form: "The skin" → "the skin" (symbols like "Au" stay as they are)."""
    first, _, rest = answer.partition(" ")
    return f"{first.lower()} {rest}" if first in ("The", "A", "About") else answer


def build_ranked() -> list[dict]:
    rng = random.Random(20240602)
    lists = []
    for i, (prompt, op, a, b, c) in enumerate(_arith_items(rng, 40, set())):
        lists.append((prompt, "arithmetic", [
            (f"{a} {op} {b} = {c}, so the answer is {c}.", 3), (f"{c}", 2),
            (f"{a} {op} {b} = {c + (1, -1, 2, -3)[i % 4]}.", 1), (RUDE[i % len(RUDE)], 0)]))
    for i in range(30):
        country, capital, _ = CAPITALS[(i * 5) % len(CAPITALS)]
        lists.append((_CAPITAL_Q[(i + 1) % 3].format(c=country), "capitals", [
            (f"The capital of {country} is {capital}.", 3), (f"{capital}.", 2),
            (f"I believe it's {_wrong_capital((i * 5) % len(CAPITALS))}.", 1),
            (UNHELPFUL[i % len(UNHELPFUL)], 0)]))
    for i, (question, answer, wrong) in enumerate(SCIENCE[:30]):
        lists.append((question, "science", [
            (f"{answer}.", 3), (f"I think the answer is {_inline(answer)}, but I'm not sure.", 2),
            (f"{wrong}.", 1), (RUDE[i % len(RUDE)], 0)]))
    rows = []
    for i, (prompt, topic, scored) in enumerate(lists):
        if i % 3 == 0:  # variable K: every third list drops its second-best response
            scored = [s for s in scored if s[1] != 2]
        scored = list(scored)
        rng.shuffle(scored)  # the best response must not always come first
        rows.append({"prompt": prompt, "responses": [r for r, _ in scored],
                     "scores": [s for _, s in scored], "topic": topic})
    rng.shuffle(rows)
    rows = [{"id": f"ranked-{i:03d}", **r, "split": _split(i)} for i, r in enumerate(rows)]
    return _check_unique(rows, "prompt", "ranked")


# ---------------------------------------------------------------- confidence QA
def build_confidence_qa() -> list[dict]:
    rng = random.Random(20240603)
    rows = [{"question": p, "answer": str(c), "topic": "arithmetic"}
            for p, _, _, _, c in _arith_items(rng, 60, set())]
    rows += [{"question": _CAPITAL_Q[i % 3].format(c=country), "answer": capital,
              "topic": "capitals"} for i, (country, capital, _) in enumerate(CAPITALS)]
    rows += [{"question": q, "answer": a, "topic": "science"} for q, a, _ in SCIENCE]
    rng.shuffle(rows)
    # one in three held out (50 questions): AUROC / ECE on 21 answers moved by ±0.1 between
    # seeds of the same run, too coarse to choose a calibration default by
    rows = [{"id": f"qa-{i:03d}", **r, "split": _split(i, every=3)} for i, r in enumerate(rows)]
    # 100 more held out (150: 50 per topic): on 50 answers an AUROC's 95% interval was about
    # ±0.15. Appended with their own seed, so the 152 rows above — and training — are unchanged.
    rng = random.Random(20241203)
    seen = {r["question"] for r in rows}
    extra = [{"question": p, "answer": str(c), "topic": "arithmetic"}  # 40 - 20: not held out
             for p, _, a, b, c in _arith_items(rng, 40, seen) if c not in (a, b)][:35]
    extra += [{"question": _CAPITAL_Q[i % 3].format(c=country), "answer": capital,
               "topic": "capitals"} for i, (country, capital) in enumerate(CAPITALS_HELD_OUT)]
    extra += [{"question": q, "answer": a, "topic": "science"} for q, a in SCIENCE_HELD_OUT]
    rng.shuffle(extra)
    rows += [{"id": f"qa-{len(rows) + i:03d}", **r, "split": "eval"} for i, r in enumerate(extra)]
    return _check_unique(rows, "question", "confidence_qa")


# ---------------------------------------------------------------- KTO (unpaired)
def build_kto(preference: list[dict]) -> list[dict]:
    """The first 75 preference pairs, each split into a desirable and an undesirable example."""
    rows = []
    for pair in preference[:75]:
        for completion, label in ((pair["chosen"], True), (pair["rejected"], False)):
            rows.append({"id": f"kto-{len(rows):03d}", "prompt": pair["prompt"],
                         "completion": completion, "label": label, "pair_id": pair["id"],
                         "topic": pair["topic"], "split": pair["split"]})
    return rows


def build_all() -> dict[str, list[dict]]:
    preference = build_preference()
    return {"safety": build_safety(), "preference": preference, "ranked": build_ranked(),
            "confidence_qa": build_confidence_qa(), "kto": build_kto(preference)}


def write_all(out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in build_all().items():
        path = out_dir / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[name] = path
    return paths


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent
    for name, path in write_all(target).items():
        print(f"{name}: {sum(1 for _ in open(path, encoding='utf-8'))} rows -> {path}")
