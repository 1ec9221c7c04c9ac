"""python experiments/refalign_general.py [method=refalign|simpo] [key=value ...]

RefAlign for general preference alignment: prompts with one strong reference answer each
(UltraFeedback prompts with strong-model references at paper scale), REINFORCE on the BERTScore
similarity of K samples to the reference. `method=simpo` runs the paper's comparison baseline in
the same loop: online SimPO whose (chosen, rejected) pairs are the best / worst of the K samples
ranked by the same BERTScore.

Offline default: SmolLM2-135M-Instruct, BERTScore-F1 on MiniLM, the bundled preference set's
prompts with their `chosen` answers as references. Paper scale: data=<jsonl of {prompt,
reference}> (or any pairs file with data_format=pairs: `chosen` becomes the reference),
model=<Llama-3-8B-Instruct dir>, encoder=<deberta-xlarge-mnli dir> bertscore_layers=19, lr=3e-6.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax import sharding  # noqa: E402
from align_jax.algorithms import refalign as ra  # noqa: E402
from align_jax.algorithms.online_loop import (LoopConfig, OptimConfig, as_record,  # noqa: E402
                                              train_online)
from align_jax.algorithms.online_simpo import OnlineSimPOObjective  # noqa: E402
from align_jax.algorithms.refalign_eval import evaluate  # noqa: E402
from align_jax.cli import config_dict, parse_overrides, run_main  # noqa: E402
from align_jax.data import load_bundled, load_examples, prompt_text  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.models import export_hf, load_causal_lm  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402
from align_jax.train import report  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    method: str = "refalign"  # refalign | simpo (online SimPO on BERTScore-ranked pairs)
    model: str | None = None
    dtype: str = "float32"
    data: str | None = None
    data_format: str = "auto"
    skip_bad_records: bool = False  # count and skip malformed records instead of stopping
    similarity: str = "bertscore_f1"
    encoder: str | None = None
    bertscore_layers: int | None = None
    k: int = 2
    length_c: float | None = None
    simpo_beta: float = 2.0  # method=simpo: β
    simpo_gamma: float = 1.0  # method=simpo: target margin γ
    steps: int = 30
    prompts_per_step: int = 4
    lr: float = 2e-5
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    eval_prompts: int = 24
    mesh: str = "-1,1,1"
    seed: int = 0
    save_every: int = 10
    out_dir: str | None = None
    export: bool = False


def reference_record(ex) -> dict:
    """{prompt, reference}: a pair's `chosen` answer serves as the reference."""
    r = as_record(ex)
    if "reference" not in r and "chosen" in r:
        r = {**r, "reference": r["chosen"]}
    return r


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    if cfg.method not in ("refalign", "simpo"):
        raise ConfigError(f"method={cfg.method!r}: expected refalign or simpo")
    check_config(cfg)
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh(cfg.mesh)
    run_dir = report.make_run_dir(f"refalign_general_{cfg.method}", cfg.out_dir)
    print(f"[align_jax] run directory: {run_dir}")
    report.write_json(run_dir / "config.json", config_dict(cfg))

    policy, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, mesh=mesh)
    similarity = ra.make_scorer(cfg.similarity, tokenizer, cfg.encoder, cfg.bertscore_layers, mesh)
    reward_fn = ra.similarity_reward(similarity, length_c=cfg.length_c)

    if cfg.data is None:
        train = [reference_record(e) for e in load_bundled("preference", "train")]
        evals = [reference_record(e) for e in load_bundled("preference", "eval")]
    else:
        rows = [reference_record(e) for e in load_examples(
            cfg.data, cfg.data_format, skip_bad_records=cfg.skip_bad_records)]
        cut = max(1, len(rows) // 10)
        train, evals = rows[cut:], rows[:cut]
    evals = evals[: cfg.eval_prompts]

    eval_sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, greedy=True)
    before, answers_before, _ = evaluate(policy, tokenizer, evals, similarity, None, eval_sampling,
                                         mesh=mesh)
    print("[align_jax] before:", report.fmt_metrics(before))
    objective = (OnlineSimPOObjective(k=cfg.k, beta=cfg.simpo_beta, gamma=cfg.simpo_gamma)
                 if cfg.method == "simpo" else None)
    policy, _ = train_online(
        policy, tokenizer, train, reward_fn,
        rcfg=ra.RefAlignConfig(k=cfg.k, length_c=cfg.length_c),
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p),
        optim=OptimConfig(lr=cfg.lr),
        loop=LoopConfig(steps=cfg.steps, prompts_per_step=cfg.prompts_per_step, seed=cfg.seed,
                        save_every=cfg.save_every, kl_every=5),
        run_dir=run_dir, mesh=mesh, objective=objective)
    after, answers_after, _ = evaluate(policy, tokenizer, evals, similarity, None, eval_sampling,
                                       mesh=mesh)
    print("[align_jax] after: ", report.fmt_metrics(after))
    report.write_json(run_dir / "eval.json", {"before": before, "after": after})
    report.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png",
                       title=f"general preference: {cfg.method}")
    n = min(10, len(evals))
    (run_dir / "samples.md").write_text(
        f"# {cfg.method}: before / after\n\n" + report.summary_table(before, after) + "\n"
        + report.sample_table([prompt_text(r["prompt"]) for r in evals[:n]], answers_before[:n],
                              answers_after[:n]))
    if cfg.export:
        export_hf(policy, tokenizer, run_dir / "export")
    print(f"[align_jax] done: {run_dir}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    run_main(main)
