"""Train-step throughput: forward + backward + AdamW, JAX (this repo) vs PyTorch transformers.

    python bench/train_step.py [--models llama100m,smollm2] [--batch 4] [--seq 256] [--steps 3]

Both sides: float32 weights and math, random weights (speed does not depend on values), the
same config, token-mean next-token NLL over all B*T tokens, AdamW (wd 0.01, clip 1.0).
Reports steady-state step time (median of `--steps` after one warm-up step; JAX compile time
separately), tokens/s and MFU. Model FLOPs per step = 6 * N_matmul * tokens + attention
12 * L * B * T^2 * H * hd (QK^T and AV, fwd+bwd, causal mask not discounted), with N_matmul = the
weights used in matmuls (the LM head counts, the embedding lookup does not). MFU divides by a
float32 matmul peak MEASURED in the same run (a big jnp matmul; torch's on its own side).
On a shared CPU the numbers are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# Both frameworks share one GPU: JAX must not grab 75% of its memory up front.
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

import jax
import jax.numpy as jnp
import numpy as np

import _roofline as roofline  # noqa: E402  (bench/ is on sys.path)
from _timing import time_calls  # noqa: E402
from align_jax.models.config import DecoderConfig

LLAMA_100M = DecoderConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                           num_layers=12, num_heads=12, num_kv_heads=4, head_dim=64,
                           tie_word_embeddings=True)
SMOLLM2_135M = DecoderConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                             num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                             rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = DecoderConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16)  # smoke-testing the script
CONFIGS = {"llama100m": LLAMA_100M, "smollm2": SMOLLM2_135M, "tiny": TINY}


def model_flops(cfg: DecoderConfig, batch: int, seq: int) -> float:
    embed = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size  # lookup only
    n_matmul = cfg.param_count() - embed
    attn = 12 * cfg.num_layers * batch * seq * seq * cfg.num_heads * cfg.head_dim
    return 6.0 * n_matmul * batch * seq + attn


def torch_peak(n: int, device: str, reps: int = 3) -> float:
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    (a @ b)
    sync()

    def one():
        a @ b
        sync()

    return 2 * n**3 / min(time_calls(one, reps))


def bench_jax(cfg: DecoderConfig, batch: int, seq: int, steps: int) -> dict:
    from flax import nnx

    from align_jax.models.llama import Decoder
    from align_jax.train.optim import make_optimizer
    from align_jax.train.state import create_train_state
    from align_jax.train.step import lm_loss_fn, make_train_step

    opt = make_optimizer("adamw", lr=1e-4, schedule="constant", weight_decay=0.01, grad_clip=1.0)
    state, bundle = create_train_state(Decoder(cfg, rngs=nnx.Rngs(0)), opt, 0)
    step = make_train_step(lm_loss_fn(), opt, bundle)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
    b = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.ones_like(ids))
    holder = [state]

    def one():
        holder[0], m = step(holder[0], b)
        jax.block_until_ready(m)

    t = time.perf_counter()
    one()  # compile + first step
    compile_s = time.perf_counter() - t
    return dict(times=time_calls(one, steps), compile_s=compile_s)


def bench_torch(cfg: DecoderConfig, batch: int, seq: int, steps: int, device: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                         rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                         tie_word_embeddings=cfg.tie_word_embeddings)
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def one():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    one()
    return dict(times=time_calls(one, steps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama100m,smollm2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (2048 CPU)")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    # True float32 on both sides (no TF32/bf16 passes on GPU), matching torch's default.
    jax.config.update("jax_default_matmul_precision", "highest")
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    peak_n = args.peak_n or (8192 if on_gpu else 2048)

    import torch

    tdev = "cuda" if (on_gpu and torch.cuda.is_available()) else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    if tdev == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    jpeak = roofline.matmul_peak_gflops(peak_n) * 1e9
    tpeak = None if args.no_torch else torch_peak(peak_n, tdev)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device: jax={dev.platform}:{dev.device_kind} torch={tdev}  cpus={os.cpu_count()}  "
          f"load1={load:.1f}  B={args.batch} T={args.seq}")
    print(f"measured float32 matmul peak ({peak_n}^3): jax {jpeak / 1e9:.1f} GFLOP/s"
          + ("" if tpeak is None else f", torch {tpeak / 1e9:.1f} GFLOP/s"))
    rows = []
    for name in args.models.split(","):
        cfg = CONFIGS[name]
        flops = model_flops(cfg, args.batch, args.seq)
        tokens = args.batch * args.seq
        if not args.no_torch:  # first: torch's cache is handed back, JAX's pool is not
            t = bench_torch(cfg, args.batch, args.seq, args.steps, tdev)
            if tdev == "cuda":
                torch.cuda.empty_cache()
        j = bench_jax(cfg, args.batch, args.seq, args.steps)
        js = statistics.median(j["times"])
        row = dict(model=name, params=cfg.param_count(), jax_s=js, compile_s=j["compile_s"],
                   jax_tps=tokens / js, jax_mfu=flops / js / jpeak)
        if not args.no_torch:
            ts = statistics.median(t["times"])
            row.update(torch_s=ts, torch_tps=tokens / ts, torch_mfu=flops / ts / tpeak,
                       ratio=ts / js)
        rows.append(row)
        print(f"  {name}: done ({flops / 1e12:.2f} TFLOP/step)", flush=True)
    hdr = (f"{'model':<10} {'params':>7} {'jax s/step':>10} {'jax tok/s':>9} {'jax MFU':>7} "
           f"{'compile s':>9}")
    if not args.no_torch:
        hdr += f" {'torch s/step':>12} {'torch tok/s':>11} {'torch MFU':>9} {'speedup':>7}"
    print(hdr)
    for r in rows:
        line = (f"{r['model']:<10} {r['params'] / 1e6:>6.1f}M {r['jax_s']:>10.3f} "
                f"{r['jax_tps']:>9.0f} {r['jax_mfu']:>7.1%} {r['compile_s']:>9.1f}")
        if "torch_s" in r:
            line += (f" {r['torch_s']:>12.3f} {r['torch_tps']:>11.0f} {r['torch_mfu']:>9.1%} "
                     f"{r['ratio']:>6.2f}x")
        print(line)
    print("speedup = torch s/step / jax s/step (>1: JAX faster). MFU vs the measured peak above.")


if __name__ == "__main__":
    main()
