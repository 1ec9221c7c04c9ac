"""Implicit-margin pass throughput (alignment potential, issue 14): our jitted, length-bucketed
avg-log-prob pass (``ap_margins.compute_avg_logps``' kernel) vs the same computation in PyTorch
with transformers' ``LlamaForCausalLM`` on the same weights and the same token batches.

    python bench/implicit_margin.py [--pairs 128] [--batch-size 8] [--repeats 2] [--model DIR]
    python bench/implicit_margin.py --tiny        # a seconds-long check that the script works

Weights: --model (a HF causal-LM dir with tokenizer), else SmolLM2-135M-Instruct (the bundled
GGUF) exported once to a temp dir, so both sides load identical files. Pairs: the bundled
preference pairs, repeated to --pairs, tokenised ONCE by the trainer's ``pair_batch`` (chat
template, max_prompt_len / max_completion_len 64) into the pass's own batches
(``ap_margins.pair_batches``: length-sorted, padding cropped); both sides get those batches:
ours what ``compute_avg_logps`` runs (``ap_margins._avg_lp_jit``: each pair's prompt once,
chosen and rejected continuing its keys / values — ``models.shared_prefix`` — where that saves
>= 25% of the token positions; the LM head on response positions only, as the DPO step does;
the plain pass is timed too), PyTorch the same concatenated rows → full logits → float32
log_softmax → response-token mean. Tokenisation and loading are excluded; ours:
first call (compiles) reported apart, steady = median of --repeats; PyTorch: one warm-up, then
the median.
Prints the machine's load average: on a shared machine the ratio is noisy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _timing import time_calls, tiny_llama_dir  # noqa: E402


def _weights(args, tmp: Path) -> Path:
    """A causal-LM dir: --model, a tiny random Llama with the bundled tokenizer, or SmolLM2."""
    if args.model:
        return Path(args.model)
    from align_jax.models import export_hf, load_causal_lm

    if args.tiny:
        return tiny_llama_dir(tmp / "tiny")
    model, tok = load_causal_lm(None)
    return export_hf(model, tok, tmp / "smollm2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default=None, help="HF causal-LM dir with its tokenizer")
    ap.add_argument("--tiny", action="store_true", help="tiny random model, 16 pairs: a check")
    args = ap.parse_args()
    if args.tiny:
        args.pairs, args.repeats = min(args.pairs, 16), 1

    import jax
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from align_jax.algorithms import ap_margins
    from align_jax.algorithms.preference_step import Fwd
    from align_jax.data import load_bundled
    from align_jax.experiment import PreferenceExperiment
    from align_jax.models import load_causal_lm

    pairs = load_bundled("preference")
    pairs = (pairs * -(-args.pairs // len(pairs)))[:args.pairs]
    tcfg = PreferenceExperiment().tokenize_config()  # the trainer's (64 / 64 / 32)
    with tempfile.TemporaryDirectory() as tmp:
        src = _weights(args, Path(tmp))
        ours, tok = load_causal_lm(src)
        hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    batches = [b for _, b in ap_margins.pair_batches(tok, pairs, tcfg, args.batch_size)]
    graphdef, state = nnx.split(ours)
    fn = ap_margins._avg_lp_jit(graphdef, Fwd(None, tcfg.max_completion_len), None)

    from align_jax.data.tokenize import pad_id_of
    from align_jax.models.shared_prefix import split_pair_batch

    # what compute_avg_logps runs: each pair's prompt once where that saves >= 25% of positions
    split = [split_pair_batch(b, pad_id=pad_id_of(tok)) for b in batches]
    ours_batches = [s if s is not None else b for s, b in zip(split, batches)]

    def positions(b):
        p = b["prefix_input_ids"].size if "prefix_input_ids" in b else 0
        return p + b["chosen_input_ids"].size + b["rejected_input_ids"].size

    def ours_pass():
        out = [fn(state, b) for b in ours_batches]
        return np.concatenate([np.concatenate([np.asarray(c), np.asarray(r)]) for c, r in out])

    def torch_pass():
        out = []
        with torch.inference_mode():
            for b in batches:
                cat = {k: torch.from_numpy(np.concatenate([b[f"chosen_{k}"], b[f"rejected_{k}"]]))
                       for k in ("input_ids", "attention_mask", "loss_mask")}
                logits = hf(input_ids=cat["input_ids"].long(),
                            attention_mask=cat["attention_mask"].long()).logits.float()
                lp = torch.log_softmax(logits[:, :-1], -1).gather(
                    -1, cat["input_ids"][:, 1:].long()[..., None])[..., 0]
                m = cat["loss_mask"][:, 1:].float()
                mean = (lp * m).sum(1) / m.sum(1).clamp(min=1)
                n = b["chosen_input_ids"].shape[0]
                out.append(torch.cat([mean[:n], mean[n:]]).numpy())
        return np.concatenate(out)

    def plain_pass():  # every batch whole: the model alone, without the shared prompt
        return jax.block_until_ready([fn(state, b) for b in batches])

    first_t = time_calls(ours_pass, 1)[0]
    ours_s = statistics.median(time_calls(ours_pass, args.repeats))
    time_calls(plain_pass, 1)  # compiles
    plain_s = statistics.median(time_calls(plain_pass, args.repeats))
    theirs = torch_pass()  # warm-up
    theirs_s = statistics.median(time_calls(torch_pass, args.repeats))
    diff = np.abs(ours_pass() - theirs).max()

    n = args.pairs  # distinct pairs per pass (the last bucket's fill rows are extra work)
    shapes = sorted({b["chosen_input_ids"].shape[1] for b in batches})
    name = Path(src).name if args.model else "tiny llama" if args.tiny else "SmolLM2-135M"
    print(f"implicit margin, {name}, {n} pairs, "
          f"batch {args.batch_size} pairs ([{2 * args.batch_size}, T] forwards), lengths {shapes}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
          f"load avg {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'implementation':<36}{'1st call s':>11}{'steady s':>10}{'pairs/s':>10}")
    print(f"{'align_jax (jit, JAX)':<36}{first_t:>11.2f}{ours_s:>10.3f}{n / ours_s:>10.1f}")
    print(f"{'align_jax, no shared prompt':<36}{'-':>11}{plain_s:>10.3f}{n / plain_s:>10.1f}")
    print(f"{'transformers CausalLM (PyTorch)':<36}{'-':>11}{theirs_s:>10.3f}{n / theirs_s:>10.1f}")
    print(f"shared prompt on {sum(s is not None for s in split)} of {len(batches)} batches: "
          f"{sum(map(positions, ours_batches))} token positions vs "
          f"{sum(map(positions, batches))} plain")
    print(f"speed ratio (ours / transformers): {theirs_s / ours_s:.2f}x "
          f"(without the shared prompt {theirs_s / plain_s:.2f}x); "
          f"max |Δ avg log-prob| = {diff:.2e}")


if __name__ == "__main__":
    main()
