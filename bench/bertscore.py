"""BERTScore throughput: our jitted JAX scorer vs the `bert-score` package (PyTorch).

    python bench/bertscore.py [--pairs 256] [--repeats 5] [--batch-size 64] [--idf]

Same weights (bundled all-MiniLM-L6-v2, layer 6, or --model DIR), same deterministic pairs.
Model loading is excluded for both. Ours: "compile" = jax's own trace/lower/compile durations
during the first call (one compile per (batch, length) bucket hit); steady state = median over
--repeats calls after it. bert-score: one warm-up call, then the median of --repeats calls.
Both include host-side tokenisation.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SUBJECTS = ["the cat", "my neighbour", "a small child", "the old engineer", "our team",
            "the government", "a tired student", "the orchestra", "this company", "the robot"]
VERBS = ["repaired", "painted", "discussed", "ignored", "bought", "described", "built",
         "cleaned", "studied", "delivered"]
OBJECTS = ["the broken bicycle", "a red house", "the quarterly report", "an old violin",
           "the new bridge", "some fresh bread", "the garden fence", "a difficult problem",
           "the museum's roof", "three heavy boxes"]
TAILS = ["yesterday", "after a long discussion", "because it was necessary",
         "in the rain", "with great care", "before the deadline", "for the first time",
         "although nobody asked", "at the end of the summer holidays in the mountains", ""]


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Candidate/reference pairs sharing some words (like policy samples vs a reference)."""
    rng = random.Random(seed)
    cands, refs = [], []
    for _ in range(n):
        s, v, o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
        cand = " ".join(x for x in (s, v, o, rng.choice(TAILS), rng.choice(TAILS)) if x)
        ref = " ".join(x for x in (rng.choice([s, rng.choice(SUBJECTS)]), rng.choice(VERBS),
                                   rng.choice([o, rng.choice(OBJECTS)]), rng.choice(TAILS)) if x)
        cands.append(cand.capitalize() + ".")
        refs.append(ref.capitalize() + ".")
    return cands, refs


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--idf", action="store_true")
    ap.add_argument("--model", default=None,
                    help="encoder dir (default: bundled all-MiniLM-L6-v2)")
    ap.add_argument("--device", default="cpu", help="torch device for bert-score")
    args = ap.parse_args()

    import bert_score
    import jax
    import numpy as np
    import torch

    from align_jax.models.encoder import default_encoder_dir, load_encoder
    from align_jax.rewards.similarity import BERTScorer

    cands, refs = make_pairs(args.pairs)
    model_dir = args.model or str(default_encoder_dir())

    ours = BERTScorer(encoder=load_encoder(model_dir), num_layers=6, idf=args.idf,
                      batch_size=args.batch_size)
    compile_s = [0.0]

    def on_event(event: str, duration: float, **_):
        if event.startswith("/jax/core/compile/"):  # trace + lower + backend compile
            compile_s[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_event)
    t = time.perf_counter()
    p_ours = np.stack(ours.prf(cands, refs))
    first = time.perf_counter() - t
    jax.monitoring.clear_event_listeners()
    steady_ours = _timed(lambda: jax.block_until_ready(ours.prf(cands, refs)), args.repeats)

    theirs = bert_score.BERTScorer(model_type=model_dir, num_layers=6, lang="en",
                                   batch_size=args.batch_size, nthreads=0, device=args.device,
                                   idf=args.idf, idf_sents=refs if args.idf else None)
    out = theirs.score(cands, refs)  # warm-up
    steady_theirs = _timed(lambda: theirs.score(cands, refs), args.repeats)
    p_theirs = np.stack([x.cpu().numpy() for x in out])

    rate_ours, rate_theirs = args.pairs / steady_ours, args.pairs / steady_theirs
    name = os.path.basename(model_dir.rstrip("/"))
    print(f"BERTScore, {name} layer 6, {args.pairs} pairs, batch {args.batch_size}, "
          f"idf={args.idf}; jax {jax.__version__} on {jax.devices()[0].platform} "
          f"({jax.device_count()} device(s)), torch {torch.__version__} "
          f"({args.device}, {torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print(f"{'implementation':<24}{'compile s':>10}{'1st call s':>11}{'steady s':>10}"
          f"{'pairs/s':>10}")
    print(f"{'align_jax (jit, JAX)':<24}{compile_s[0]:>10.2f}{first:>11.2f}{steady_ours:>10.3f}"
          f"{rate_ours:>10.1f}")
    print(f"{'bert-score (PyTorch)':<24}{'-':>10}{'-':>11}{steady_theirs:>10.3f}"
          f"{rate_theirs:>10.1f}")
    print(f"speed ratio (ours / bert-score): {rate_ours / rate_theirs:.2f}x; "
          f"max |ΔP,R,F| = {np.abs(p_ours - p_theirs).max():.2e}")


if __name__ == "__main__":
    main()
