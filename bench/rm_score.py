"""Reward-model scoring throughput: our jitted JAX scorer vs transformers'
LlamaForSequenceClassification (PyTorch CPU) on the same weights and the same batches.

    python bench/rm_score.py [--pairs 256] [--batch-size 16] [--repeats 3] [--k 2] [--model DIR]
    python bench/rm_score.py --tiny          # a seconds-long check that the script works

Weights: --model (a HF …ForSequenceClassification dir with tokenizer), else SmolLM2-135M (the
bundled GGUF's decoder) under a random score head, exported once to a temp dir so both sides load
identical files. Pairs: the bundled preference prompts with their chosen/rejected responses
(--k 4: two more answers per prompt from the next pairs, as ALaRM scores K samples of a
prompt), repeated to --pairs. Both sides get the SAME token batches (ours: `score_ids` sorts
by length into buckets of --batch-size rows; PyTorch gets those same row groups, right-padded
to each group's longest), so the ratio measures the model, not the batching. A second row
times what ``rm(prompts, responses)`` runs: the rows of one prompt share its templated tokens,
run once per batch where that saves >= 25% of the positions (``models.shared_prefix``; the
peer runs every row whole, as transformers' pipeline does). Loading is excluded; ours: first
call (compiles) reported apart, steady state = median of --repeats calls; PyTorch: one warm-up
call, then the median of --repeats. Tokenisation is excluded on both sides.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import _roofline as roofline  # noqa: E402  (bench/ is on sys.path)
from _timing import time_calls, tiny_llama_dir  # noqa: E402


def _weights(args, tmp: Path) -> Path:
    """A sequence-classification dir: --model, a tiny random Llama (--tiny), or SmolLM2-135M."""
    if args.model:
        return Path(args.model)
    from flax import nnx

    from align_jax.algorithms.reward_model import add_score_head
    from align_jax.models import load_causal_lm
    from align_jax.models.score_head import save_scored_decoder

    if args.tiny:
        base = tiny_llama_dir(tmp / "tiny_base")
        policy, tok = load_causal_lm(base)
    else:
        policy, tok = load_causal_lm(None)
    rm = add_score_head(policy, tok, seed=0)
    rm.score.set_value(nnx.initializers.normal(1.0)(nnx.Rngs(1).params(), rm.score.shape))
    out = save_scored_decoder(rm, tmp / "rm")
    tok.save_pretrained(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=2, help="rows per prompt (2: the pairs)")
    ap.add_argument("--model", default=None, help="HF …ForSequenceClassification dir")
    ap.add_argument("--tiny", action="store_true", help="tiny random model, 16 pairs: a check")
    args = ap.parse_args()
    if args.tiny:
        args.pairs, args.repeats = min(args.pairs, 16), 1

    import statistics

    import jax
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from align_jax.data import load_bundled
    from align_jax.data.tokenize import length_bucket
    from align_jax.rewards.reward_model import encode_pairs, load_reward_model

    pairs = load_bundled("preference", split="train")
    pool = [r for p in pairs for r in (p.chosen, p.rejected)]
    K = args.k  # rows per prompt: its chosen and rejected, then other pairs' answers (ALaRM's K)
    prompts = [p.prompt for p in pairs for _ in range(K)]
    responses = [pool[(2 * i + k) % len(pool)] for i in range(len(pairs)) for k in range(K)]
    reps = -(-args.pairs // len(prompts))
    prompts, responses = (prompts * reps)[:args.pairs], (responses * reps)[:args.pairs]

    with tempfile.TemporaryDirectory() as tmp:
        src = _weights(args, Path(tmp))
        ours = load_reward_model(src, batch_size=args.batch_size, progress=False)
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(
            src, dtype=torch.float32).eval()
        seqs = encode_pairs(ours.tokenizer, prompts, responses, ours.max_length)

    order = np.argsort([len(s) for s in seqs], kind="stable")
    groups = [[seqs[i] for i in order[s:s + args.batch_size]]
              for s in range(0, len(seqs), args.batch_size)]
    pad = ours.pad_id

    def torch_scores():
        out = []
        with torch.inference_mode():
            for g in groups:
                T = max(len(x) for x in g)
                ids = torch.full((len(g), T), pad, dtype=torch.long)
                mask = torch.zeros((len(g), T), dtype=torch.long)
                for r, x in enumerate(g):
                    ids[r, :len(x)], mask[r, :len(x)] = torch.tensor(x), 1
                out.append(hf(input_ids=ids, attention_mask=mask).logits[:, 0])
        return torch.cat(out).numpy()

    # dedupe=False: the pairs repeat to fill --pairs, and both sides must do the same work
    first_t = time_calls(lambda: ours.score_ids(seqs, dedupe=False), 1)[0]
    ours_s = statistics.median(time_calls(lambda: ours.score_ids(seqs, dedupe=False),
                                          args.repeats))
    # what rm(prompts, responses) runs: the K rows of a prompt share its tokens (one group per
    # prompt: the same distinct work as above; taken where it saves >= 25% of the positions)
    prompt_of = [i // K for i in range(len(seqs))]
    shared_call = lambda: ours.score_ids(seqs, dedupe=False, groups=prompt_of)
    ours.shared_batches = 0
    first_sh = time_calls(shared_call, 1)[0]
    shared_on = ours.shared_batches > 0
    shared_s = statistics.median(time_calls(shared_call, args.repeats))
    theirs_scores = torch_scores()  # warm-up
    theirs_s = statistics.median(time_calls(torch_scores, args.repeats))
    diff = np.abs(ours.score_ids(seqs)[order, 0] - theirs_scores).max()
    diff_sh = np.abs(shared_call()[order, 0] - theirs_scores).max()

    n = len(seqs)
    buckets = sorted({length_bucket(len(g[-1])) for g in groups})
    name = Path(src).name if args.model else "tiny llama" if args.tiny else "SmolLM2-135M"
    print(f"reward model {name}, {n} pairs ({K} per prompt), batch {args.batch_size}, "
          f"length buckets {buckets}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print(f"{'implementation':<34}{'1st call s':>11}{'steady s':>10}{'pairs/s':>10}")
    print(f"{'align_jax (jit, JAX)':<34}{first_t:>11.2f}{ours_s:>10.3f}{n / ours_s:>10.1f}")
    label = "align_jax, shared prompt" + ("" if shared_on else " (not taken)")
    print(f"{label:<34}{first_sh:>11.2f}{shared_s:>10.3f}{n / shared_s:>10.1f}")
    print(f"{'transformers SeqCls (PyTorch)':<34}{'-':>11}{theirs_s:>10.3f}{n / theirs_s:>10.1f}")
    print(f"speed ratio (ours / transformers): model {theirs_s / ours_s:.2f}x, "
          f"rm(prompts, responses) with the shared prompt {theirs_s / shared_s:.2f}x; "
          f"max |Δscore| = {diff:.2e} / {diff_sh:.2e}")
    # executed FLOPs of ours: every group padded to batch_size rows × its length bucket
    c, params = ours.model.cfg, nnx.state(ours.model, nnx.Param)
    n_mm = roofline.matmul_params(params, skip=("embed", "lm_head"))  # the score head counts
    flops = sum(roofline.forward_flops(n_mm, args.batch_size * T, c.num_layers, T,
                                       c.num_heads * c.head_dim)
                for T in (length_bucket(len(g[-1])) for g in groups))
    peak = roofline.matmul_peak_gflops()
    print(roofline.header(peak))
    print(roofline.row("reward-model scoring, ours", flops, ours_s, peak))
    print(roofline.row("reward-model scoring, transformers (same FLOPs)", flops, theirs_s, peak))


if __name__ == "__main__":
    main()
