"""python experiments/refalign_general.py [method=refalign|simpo] [key=value ...]

RefAlign for general preference alignment: prompts with one strong reference answer each
(UltraFeedback prompts with strong-model references at paper scale), REINFORCE on the BERTScore
similarity of K samples to the reference. `method=simpo` runs the paper's comparison baseline in
the same loop: online SimPO whose (chosen, rejected) pairs are the best / worst of the K samples
ranked by the same BERTScore.

Offline default (2 CPU cores: 7 min 45 s, one run at a time, issue 20): SmolLM2-135M-Instruct,
BERTScore-F1 on MiniLM, the bundled preference set's
prompts with their `chosen` answers as references. Paper scale: data=<jsonl of {prompt,
reference}> (or any pairs file with data_format=pairs: `chosen` becomes the reference),
model=<Llama-3-8B-Instruct dir>, encoder=<deberta-xlarge-mnli dir> bertscore_layers=19, lr=3e-6.
Formulas and defaults: docs/methods.md.

Outputs in runs/refalign_general_<method>-<timestamp>/ (or out_dir=; re-using it resumes):
config.json, metrics.jsonl and tb/, checkpoints/, curves.png, eval_before.json, eval_after.json,
samples.md (prompt, reference, before, after), export/ (export=true).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax import experiment as ex  # noqa: E402
from align_jax.algorithms.online_simpo import OnlineSimPOObjective  # noqa: E402
from align_jax.algorithms.refalign_eval import evaluate  # noqa: E402
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import as_record, prompt_text  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.models import load_causal_lm  # noqa: E402
from align_jax.rewards import compose  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config(ex.OnlineExperiment):
    method: str = "refalign"  # refalign | simpo (online SimPO on BERTScore-ranked pairs)
    bertscore_layers: int | None = None  # None = the encoder's last layer
    simpo_beta: float = 2.0  # method=simpo: β
    simpo_gamma: float = 1.0  # method=simpo: target margin γ


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
    mesh = ex.mesh_of(cfg)
    run_dir = ex.open_run(f"refalign_general_{cfg.method}", cfg)

    policy, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, mesh=mesh)
    similarity = compose.similarity_scorer(cfg.similarity, tokenizer, cfg.encoder,
                                           cfg.bertscore_layers, mesh)
    reward_fn = compose.similarity_reward(similarity, length_c=cfg.objective.length_c)

    train, evals = ex.load_splits("preference", cfg.data, cfg.data_format,
                                  skip_bad_records=cfg.skip_bad_records,
                                  to_record=reference_record)
    evals = evals[: cfg.eval_prompts]

    eval_sampling = SamplingConfig(max_new_tokens=cfg.sampling.max_new_tokens, greedy=True)

    def held_out(model):
        m, answers, _ = evaluate(model, tokenizer, evals, similarity, None, eval_sampling,
                                 mesh=mesh)
        return {"metrics": m, "answers": answers}

    objective = (OnlineSimPOObjective(k=cfg.objective.k, beta=cfg.simpo_beta,
                                      gamma=cfg.simpo_gamma) if cfg.method == "simpo" else None)
    before, policy, after = ex.train_between_evals(
        cfg, run_dir, policy, tokenizer, train, reward_fn, held_out, mesh=mesh,
        label=f"refalign_general_{cfg.method}", objective=objective)
    return ex.finish(run_dir, f"general preference: {cfg.method}", before, after,
                     [prompt_text(r["prompt"]) for r in evals], order=range(min(10, len(evals))),
                     references=[r.get("reference", "") for r in evals], policy=policy,
                     tokenizer=tokenizer, export=cfg.export)


if __name__ == "__main__":
    run_main(main)
