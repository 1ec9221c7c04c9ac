"""DPO (sigmoid) train-step throughput: this repo's jitted step vs TRL's DPOTrainer (PyTorch).

    python bench/dpo_step.py [--pairs 8] [--prompt 64] [--completion 64] [--steps 5]

Same model (a ~25M-parameter llama, random weights, IDENTICAL in both: the torch model is saved and
loaded into JAX), same batch (8 pairs × 128 tokens: 64 prompt + 64 completion, no padding), float32
everywhere, AdamW (lr 1e-6, no weight decay, grad clip 1.0 — TRL's defaults), β = 0.1. The reference
is a frozen copy of the initial model forwarded EVERY step on both sides (TRL:
``precompute_ref_log_probs=False`` with an explicit ``ref_model``; JAX: ``reference="batch"``). TRL's
step = ``trainer.training_step`` (forward of policy + reference, DPO loss, backward) + gradient
clipping + ``optimizer.step`` + ``zero_grad``, on a batch from TRL's own collator; the trainer is
built on a tiny in-memory text dataset; its gradient checkpointing (TRL's default) is OFF unless
``--trl-checkpointing``, since the JAX step does not rematerialise either. Both sides apply the LM
head to the response positions only (TRL's fused LM head; ``completion_len`` here). An extra JAX row uses reference log-probs precomputed once
(the default of experiments/dpo.py), which removes the reference forward from the step.

tokens/s counts every token of the chosen and rejected sequences (2 · pairs · 128). Reported: median
step time over ``--steps`` after warm-up (JAX compile time separately); the implementations are
timed round-robin (one step each, repeated), so background load on a shared CPU hits them alike.
The load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import _roofline as roofline  # bench/ is on sys.path
from _timing import time_calls  # bench/ is on sys.path

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV, HEAD_DIM = 32000, 384, 1024, 8, 6, 2, 64
BETA, LR = 0.1, 1e-6


def torch_model(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV, head_dim=HEAD_DIM, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def make_batch(pairs: int, prompt: int, completion: int, seed: int = 0):
    """Token ids (no specials: 3 .. VOCAB-1), one prompt + chosen + rejected per pair."""
    r = np.random.default_rng(seed)

    def ids(n):
        return r.integers(3, VOCAB, n).tolist()

    return [{"prompt_ids": ids(prompt), "chosen_ids": ids(completion),
             "rejected_ids": ids(completion)} for _ in range(pairs)]


def jax_batch(examples) -> dict[str, np.ndarray]:
    out = {}
    for side in ("chosen", "rejected"):
        ids = np.array([e["prompt_ids"] + e[f"{side}_ids"] for e in examples], np.int32)
        lm = np.array([[0] * len(e["prompt_ids"]) + [1] * len(e[f"{side}_ids"]) for e in examples],
                      np.int32)
        out.update({f"{side}_input_ids": ids, f"{side}_attention_mask": np.ones_like(ids),
                    f"{side}_loss_mask": lm})
    return out


def bench_jax(model_dir: str, examples, reference: str) -> dict:
    from align_jax.algorithms.preference_step import (RefModelBundle, make_pair_loss_fn,
                                                      reference_pair_values)
    from align_jax.losses import PrefConfig
    from align_jax.models import hf_io
    from align_jax.train.optim import make_optimizer
    from align_jax.train.state import create_train_state
    from align_jax.train.step import make_train_step
    from flax import nnx

    model = hf_io.load_hf_dir(model_dir)
    batch = {k: jnp.asarray(v) for k, v in jax_batch(examples).items()}
    if reference == "cache":  # what the disk cache would hold: one reference pass, outside the step
        ref = nnx.jit(reference_pair_values)(model, batch)
        batch.update({k: jax.block_until_ready(v) for k, v in ref.items()})
    opt = make_optimizer("adamw", lr=LR, schedule="constant", weight_decay=0.0, grad_clip=1.0)
    state, bundle = create_train_state(model, opt, 0)
    if reference == "batch":
        bundle = RefModelBundle.wrap(bundle, jax.tree.map(jnp.copy, state.params))
    # LM head on the response positions only (TRL's fused LM head skips the prompt likewise)
    loss_fn = make_pair_loss_fn(PrefConfig(loss="sigmoid", beta=BETA),
                                completion_len=max(len(e["chosen_ids"]) for e in examples))
    step = make_train_step(loss_fn, opt, bundle)
    holder = [state]

    def one():
        holder[0], m = step(holder[0], batch)
        jax.block_until_ready(m)
        return m

    t = time.perf_counter()
    m = one()
    compile_s = time.perf_counter() - t
    return dict(step=one, compile_s=compile_s, loss0=float(m["loss"][0] / m["loss"][1]))


def bench_trl(model, examples, steps: int, threads: int, checkpointing: bool, out: str) -> dict:
    import copy

    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    torch.set_num_threads(threads)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(64)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tiny = Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5"] * 4,
                              "chosen": [" w6 w7", " w8"] * 4, "rejected": [" w9", " w10 w11"] * 4})
    ref = copy.deepcopy(model).eval()
    args = DPOConfig(output_dir=out, per_device_train_batch_size=len(examples),
                     learning_rate=LR, beta=BETA, loss_type=["sigmoid"], max_length=None,
                     precompute_ref_log_probs=False, report_to="none", use_cpu=True,
                     save_strategy="no", logging_strategy="no", bf16=False, fp16=False,
                     dataloader_num_workers=0, max_grad_norm=1.0, weight_decay=0.0,
                     lr_scheduler_type="constant", seed=0,
                     gradient_checkpointing=checkpointing)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=tiny,
                         processing_class=tok)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps + 2)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop otherwise
    inputs = DataCollatorForPreference(pad_token_id=0)(examples)
    losses = []

    def one():
        loss = trainer.training_step(trainer.model, dict(inputs))
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.model.zero_grad(set_to_none=True)
        losses.append(float(loss))

    one()  # warm-up
    return dict(step=one, loss0=losses[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    ap.add_argument("--trl-checkpointing", action="store_true",
                    help="TRL's default gradient checkpointing (off here: JAX does not remat either)")
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # true float32, like torch
    examples = make_batch(args.pairs, args.prompt, args.completion)
    tokens = 2 * args.pairs * (args.prompt + args.completion)
    model = torch_model()
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        jb = bench_jax(d, examples, "batch")
        jc = bench_jax(d, examples, "cache")
        t = bench_trl(model, examples, args.steps, args.threads, args.trl_checkpointing, d)
        # Round-robin: on a shared machine every implementation sees the same background load.
        for r in (t, jb, jc):
            r["times"] = []
        for _ in range(args.steps):
            for r in (t, jb, jc):
                r["times"] += time_calls(r["step"], 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev = jax.devices()[0]
    print(f"device: jax={dev.platform} torch=cpu ({args.threads} threads)  cpus={os.cpu_count()}  "
          f"load1={load:.1f}  model={n_params / 1e6:.1f}M params  batch={args.pairs} pairs x "
          f"{args.prompt + args.completion} tokens  ({tokens} tokens/step)")
    print(f"step-0 loss (log 2 = 0.6931 expected on both): jax {jb['loss0']:.4f}  trl "
          f"{t['loss0']:.4f}")
    ts = statistics.median(t["times"])
    ckpt = "on" if args.trl_checkpointing else "off"
    rows = [(f"TRL DPOTrainer (per-batch ref, remat {ckpt})", ts, None),
            ("align_jax (per-batch ref)", statistics.median(jb["times"]), jb["compile_s"]),
            ("align_jax (cached ref)", statistics.median(jc["times"]), jc["compile_s"])]
    print(f"{'implementation':<40} {'s/step':>8} {'tokens/s':>9} {'vs TRL':>7} {'compile s':>9}")
    for name, s, c in rows:
        print(f"{name:<40} {s:>8.3f} {tokens / s:>9.0f} {ts / s:>6.2f}x "
              f"{'' if c is None else f'{c:>9.1f}'}")
    # executed FLOPs: policy forward + backward (3x) on both sides; the LM head on the response
    # positions only; a per-batch reference adds one forward
    T = args.prompt + args.completion
    n_body = n_params - VOCAB * HIDDEN  # tied embedding: counted once, as the LM head below
    fwd = (roofline.forward_flops(n_body, tokens, LAYERS, T, HEADS * HEAD_DIM)
           + 2.0 * VOCAB * HIDDEN * 2 * args.pairs * args.completion)
    peak = roofline.matmul_peak_gflops()
    print(roofline.header(peak))
    print(roofline.row("DPO step, TRL (per-batch ref)", 4 * fwd, ts, peak))
    print(roofline.row("DPO step, align_jax (per-batch ref)", 4 * fwd, rows[1][1], peak))
    print(roofline.row("DPO step, align_jax (cached ref)", 3 * fwd, rows[2][1], peak))


if __name__ == "__main__":
    main()
