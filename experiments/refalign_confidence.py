"""python experiments/refalign_confidence.py [key=value ...]

RefAlign, confidence variant: the policy answers a question and states a verbalised confidence
("Confidence: N%"). Reward per sample = similarity of the answer (confidence stripped) to the
reference answer (quality) + α · order term that rewards confidences ordered like quality across
the K samples of the prompt (CONQORD-style); a missing confidence gets a defined penalty.
Evaluated on held-out questions with accuracy, ECE, AUROC and Pearson(confidence, quality).

Offline default: SmolLM2-135M-Instruct, BERTScore-F1 on MiniLM, the bundled short factual QA
set. Paper scale: an SFT'd policy (model=), the CONQORD data (data=<jsonl of {question, answer}>
data_format=qa), k=2, lr=3e-6.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from align_jax import sharding  # noqa: E402
from align_jax.algorithms import refalign as ra  # noqa: E402
from align_jax.algorithms.online_loop import (LoopConfig, OptimConfig, as_record,  # noqa: E402
                                              train_online)
from align_jax.algorithms.refalign_eval import generate_answers  # noqa: E402
from align_jax.cli import config_dict, parse_overrides, run_main  # noqa: E402
from align_jax.data import load_bundled, load_examples  # noqa: E402
from align_jax.models import export_hf, load_causal_lm  # noqa: E402
from align_jax.rewards import confidence as conf  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402
from align_jax.train import report  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    model: str | None = None
    dtype: str = "float32"
    data: str | None = None  # None = bundled confidence_qa
    data_format: str = "qa"
    skip_bad_records: bool = False  # count and skip malformed records instead of stopping
    similarity: str = "bertscore_f1"
    encoder: str | None = None
    alpha: float = 0.5  # weight of the order term
    missing_penalty: float = -0.5  # order reward of a sample with no parsable confidence
    k: int = 2
    steps: int = 30
    prompts_per_step: int = 4
    lr: float = 2e-5
    max_new_tokens: int = 32
    temperature: float = 1.0
    eval_prompts: int = 24
    mesh: str = "-1,1,1"
    seed: int = 0
    save_every: int = 10
    out_dir: str | None = None
    export: bool = False


def with_instruction(rec: dict) -> dict:
    return {**rec, "question": rec["prompt"],
            "prompt": f"{rec['prompt']}\n{conf.CONFIDENCE_INSTRUCTION}"}


def confidence_reward(similarity, k: int, alpha: float, missing_penalty: float) -> ra.RewardFn:
    """quality = S(answer without the confidence line, reference); + α·order over each prompt's K."""

    def fn(prompts, responses, records):
        answers = [conf.strip_confidence(y) for y in responses]
        q = np.asarray(similarity(answers, [r["reference"] for r in records]), np.float32)
        c = np.array([np.nan if (v := conf.parse_confidence(y)) is None else v for y in responses])
        order = conf.order_reward(q.reshape(-1, k), c.reshape(-1, k), missing_penalty).reshape(-1)
        return {"quality": (q, 1.0), "order": (order, alpha)}

    return fn


def calibration_eval(policy, tokenizer, records, similarity, max_new_tokens, mesh) -> tuple[dict, list]:
    answers = generate_answers(policy, tokenizer, records,
                               SamplingConfig(max_new_tokens=max_new_tokens, greedy=True), mesh=mesh)
    body = [conf.strip_confidence(a) for a in answers]
    quality = np.asarray(similarity(body, [r["reference"] for r in records]), np.float64)
    correct = np.array([r["reference"].lower().strip(" .") in b.lower() for r, b in zip(records, body)])
    c = np.array([np.nan if (v := conf.parse_confidence(a)) is None else v for a in answers])
    ok = ~np.isnan(c)
    m = {"quality": float(quality.mean()), "accuracy": float(correct.mean()),
         "parsed_frac": float(ok.mean()),
         "ece": conf.ece(c[ok], correct[ok]) if ok.any() else float("nan"),
         "auroc": conf.auroc(c[ok], correct[ok]) if ok.any() else float("nan"),
         "pearson": conf.pearson(c[ok], quality[ok]) if ok.any() else float("nan")}
    return m, answers


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh(cfg.mesh)
    run_dir = report.make_run_dir("refalign_confidence", cfg.out_dir)
    print(f"[align_jax] run directory: {run_dir}")
    report.write_json(run_dir / "config.json", config_dict(cfg))

    policy, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, mesh=mesh)
    similarity = ra.make_scorer(cfg.similarity, tokenizer, cfg.encoder, mesh=mesh)
    reward_fn = confidence_reward(similarity, cfg.k, cfg.alpha, cfg.missing_penalty)

    if cfg.data is None:
        train = [with_instruction(as_record(e)) for e in load_bundled("confidence_qa", "train")]
        evals = [with_instruction(as_record(e)) for e in load_bundled("confidence_qa", "eval")]
    else:
        rows = [with_instruction(as_record(e)) for e in load_examples(
            cfg.data, cfg.data_format, skip_bad_records=cfg.skip_bad_records)]
        cut = max(1, len(rows) // 10)
        train, evals = rows[cut:], rows[:cut]
    evals = evals[: cfg.eval_prompts]

    before, answers_before = calibration_eval(policy, tokenizer, evals, similarity,
                                              cfg.max_new_tokens, mesh)
    print("[align_jax] before:", report.fmt_metrics(before))
    policy, _ = train_online(
        policy, tokenizer, train, reward_fn,
        rcfg=ra.RefAlignConfig(k=cfg.k),
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
        optim=OptimConfig(lr=cfg.lr),
        loop=LoopConfig(steps=cfg.steps, prompts_per_step=cfg.prompts_per_step, seed=cfg.seed,
                        save_every=cfg.save_every, kl_every=5),
        run_dir=run_dir, mesh=mesh)
    after, answers_after = calibration_eval(policy, tokenizer, evals, similarity,
                                            cfg.max_new_tokens, mesh)
    print("[align_jax] after: ", report.fmt_metrics(after))
    report.write_json(run_dir / "eval.json", {"before": before, "after": after})
    report.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title="RefAlign confidence")
    n = min(10, len(evals))
    (run_dir / "samples.md").write_text(
        "# RefAlign confidence: before / after\n\n" + report.summary_table(before, after) + "\n"
        + report.sample_table([r["question"] for r in evals[:n]], answers_before[:n],
                              answers_after[:n], {"reference": [r["reference"] for r in evals[:n]]}))
    if cfg.export:
        export_hf(policy, tokenizer, run_dir / "export")
    print(f"[align_jax] done: {run_dir}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    run_main(main)
