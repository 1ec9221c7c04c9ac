"""Record the default policy's own answers to the risky TRAIN prompts of ``safety.jsonl``:
``python -m align_jax.data.bundled.sample_policy_answers``  → ``safety_policy_answers.jsonl``.

Why: the learned safety classifier (`align_jax.rewards.safety_classifier`) must recognise what a
small instruct model really writes when it complies or rambles (markdown steps, off-topic
babble), not only hand-written templates. SmolLM2-135M-Instruct refuses few of these prompts;
answers that the refusal patterns flag as a refusal are dropped, the rest are "not a safe
answer" examples (label 0). Eval topics are never sampled. Deterministic for a given jax/XLA
build (fixed keys); the shipped file was made once with the pinned requirements.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SETTINGS = ((dict(greedy=True), 1, 0), (dict(temperature=1.0), 1, 1), (dict(temperature=0.7), 1, 2))


def main(out: str | None = None) -> Path:
    import jax

    from align_jax.algorithms import refalign as ra
    from align_jax.data import as_record
    from align_jax.data.bundled import BUNDLED_DIR, load_bundled
    from align_jax.models import load_causal_lm
    from align_jax.rewards.safety import refusal_score
    from align_jax.sampling.sampler import SamplingConfig

    model, tok = load_causal_lm()
    recs = [as_record(e) for e in load_bundled("safety", split="train", category="risky")]
    rows = []
    for kw, k, seed in SETTINGS:
        cfg = SamplingConfig(max_new_tokens=48, prompt_bucket=16, **kw)
        for i in range(0, len(recs), 16):
            chunk = recs[i:i + 16]
            chunk = chunk + chunk[:1] * (16 - len(chunk))  # one compiled shape
            ro = ra.rollout(model, tok, chunk, jax.random.fold_in(jax.random.PRNGKey(seed), i), cfg, k)
            for rec, text in list(zip(ro.records, ro.texts))[: len(recs[i:i + 16]) * k]:
                if text.strip() and refusal_score(text) <= 0:
                    rows.append({"prompt": rec["prompt"], "answer": text, "label": 0,
                                 "sampling": json.dumps(kw)})
    path = Path(out) if out else BUNDLED_DIR / "safety_policy_answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} answers -> {path}")
    return path


if __name__ == "__main__":
    main(*sys.argv[1:2])
