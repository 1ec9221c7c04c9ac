"""python bench/refalign_step.py [steps=6] [prompts_per_step=4] [k=2] [max_new_tokens=48] [model=...]

Seconds per RefAlign step, split into sampling (jitted KV-cache sampler), reward (BERTScore-F1
on MiniLM + harmless scorer, host side included) and update (forward + backward + AdamW), on
the offline default policy (SmolLM2-135M-Instruct) and the bundled safety prompts. The first
step (compiles) is reported separately from the steady-state median of the rest. Roofline: the
update's achieved GFLOP/s (full fine-tuning: forward + backward = 3 x the forward FLOPs of the
executed [rows, prompt bucket + new tokens] batch) against the float32 matmul rate measured in
the same run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _roofline as roofline  # noqa: E402  (bench/ is on sys.path)
from flax import nnx  # noqa: E402

from align_jax.algorithms import refalign as ra  # noqa: E402
from align_jax.algorithms.online_loop import OnlineLoopConfig, train_online  # noqa: E402
from align_jax.cli import parse_overrides  # noqa: E402
from align_jax.data import as_record, load_bundled  # noqa: E402
from align_jax.models import load_causal_lm  # noqa: E402
from align_jax.rewards import compose  # noqa: E402
from align_jax.rewards.safety import make_harmless_scorer  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    model: str | None = None
    steps: int = 6
    prompts_per_step: int = 4
    k: int = 2
    max_new_tokens: int = 48


def main(argv):
    cfg = parse_overrides(Config(), argv)
    policy, tok = load_causal_lm(cfg.model)
    sim = compose.similarity_scorer("bertscore_f1", tok)
    reward = compose.combine_rewards(compose.similarity_reward(sim),
                                     compose.harmless_reward(make_harmless_scorer("refusal")))
    data = [as_record(e) for e in load_bundled("safety", split="train")]
    shapes = []  # executed [rows, prompt bucket + new tokens] of each update

    def record(step, stats, ro):
        shapes.append((ro.out.tokens.shape[0],
                       ro.out.prompt_ids.shape[1] + ro.out.tokens.shape[1]))

    c = policy.cfg
    n_mm = roofline.matmul_params(nnx.state(policy, nnx.Param),
                                  skip=() if c.tie_word_embeddings else ("embed",))
    with tempfile.TemporaryDirectory() as d:
        train_online(policy, tok, data, reward, rcfg=ra.RefAlignConfig(k=cfg.k),
                     sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens),
                     optim=OptimConfig(lr=1e-5),
                     loop=OnlineLoopConfig(steps=cfg.steps, prompts_per_step=cfg.prompts_per_step,
                                           save_every=10**6, kl_every=0, progress=False),
                     run_dir=d, step_callback=record)
        rows = [json.loads(l) for l in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    parts = ("time/sample_s", "time/reward_s", "time/update_s")
    first = {p: rows[0][p] for p in parts}
    steady = {p: statistics.median(r[p] for r in rows[1:]) for p in parts}
    total = sum(steady.values())
    rows_n = cfg.prompts_per_step * cfg.k
    print(f"RefAlign step, {rows_n} samples x {cfg.max_new_tokens} new tokens, "
          f"SmolLM2-135M, BERTScore MiniLM")
    print(f"| part | first step (compile) s | steady median s | share |")
    print(f"|---|---|---|---|")
    for p in parts:
        print(f"| {p.split('/')[1][:-2]} | {first[p]:.2f} | {steady[p]:.2f} | "
              f"{steady[p] / total:.0%} |")
    print(f"| total | {sum(first.values()):.2f} | {total:.2f} | 100% |")
    print(f"samples/s (steady): {rows_n / total:.2f}")
    R, T = statistics.median(r for r, _ in shapes[1:]), statistics.median(t for _, t in shapes[1:])
    flops = 3 * roofline.forward_flops(n_mm, R * T, c.num_layers, T / 2, c.num_heads * c.head_dim)
    peak = roofline.matmul_peak_gflops()
    print(roofline.header(peak))
    print(roofline.row(f"policy-gradient update [{R:.0f}, {T:.0f}] (fwd + bwd)", flops,
                       steady["time/update_s"], peak))


if __name__ == "__main__":
    main(sys.argv[1:])
