"""python experiments/ld_align.py [weight=softmax|mean_norm|none] [rm=PATH] [key=value ...]

LD-Align (arXiv 2404.06390): self-play DPO whose winner is the SFT reference answer and whose loser
is a fresh policy sample, each pair's DPO term weighted by the latent distance between the two
answers under a guide auto-encoder (encoder ϕ: MiniLM mean-pooled + projection; decoder ψ: a
SmolLM2 with the latent as prefix vectors, LoRA) trained by reconstruction on the references and
the initial policy's samples. `weight=none` is SPIN (same rounds, every weight 1, no guide).

    python experiments/ld_align.py                         # LD-Align, softmax weights, 2 rounds
    python experiments/ld_align.py weight=none             # SPIN baseline, same budget
    python experiments/ld_align.py weight=mean_norm norm=l1 refresh_reference=false
    python experiments/ld_align.py rm=runs/reward_model-<time>/export   # + reward-model score

Offline default (SmolLM2-135M-Instruct, LoRA r=8; 32 bundled preference prompts whose `chosen`
answer is the reference; 2 rounds × 8 updates of 4 pairs; guide 30 updates of 8 rows; held-out
BERTScore-F1 to the reference on 16 eval prompts before and after each round): 6 min on 2 quiet
cores (SPIN, no guide: 3.5 min; measured, README). Paper scale: docs/methods.md.
Outputs in runs/ld_align-<time>/ (out_dir= resumes): config.json, guide/ (its metrics, checkpoints,
curves.png = reconstruction NLL, latents.png = 2-D PCA of reference vs sample latents,
export/guide_params.npz), rounds/round_<r>/ (samples.json, pairs.jsonl with distance and weight,
reference.npz, eval.json), rounds.md, metrics.jsonl, checkpoints/, curves.png, eval_before.json /
eval_after.json, samples.md, export/ (export=true).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax import experiment as ex  # noqa: E402
from align_jax.algorithms.latent_guide import GuideTrainConfig, make_latent_fn, train_guide  # noqa: E402
from align_jax.algorithms.ld_align import RoundsConfig, sample_losers, train_ld_align  # noqa: E402
from align_jax.algorithms.preference_step import make_loss_fn  # noqa: E402
from align_jax.algorithms.refalign_eval import evaluate  # noqa: E402
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import prompt_text  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.losses import PrefConfig  # noqa: E402
from align_jax.models.latent_ae import GuideConfig, load_guide  # noqa: E402
from align_jax.rewards import compose  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402
from align_jax.train import report  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402



def reference_record(example) -> dict:
    """{prompt, reference}: a pair's `chosen` answer is the reference (the SFT target)."""
    r = ex.as_record(example)
    return {**r, "reference": r["chosen"]} if "reference" not in r and "chosen" in r else r


@dataclasses.dataclass(frozen=True)
class Config(ex.PreferenceExperiment):
    SHORT_GROUPS: ClassVar[tuple[str, ...]] = ("train", "objective", "ld", "sampling", "guide")

    lora_rank: int = 8
    eval_examples: int | None = 16
    objective: PrefConfig = PrefConfig(loss="ld_align", beta=0.1)  # weighted DPO (registered)
    ld: RoundsConfig = RoundsConfig()  # rounds, weight, weight_temperature, norm, refresh_reference
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=48, temperature=1.0)  # the losers
    eval_max_new_tokens: int = 48  # greedy held-out answers
    guide: GuideConfig = GuideConfig()  # latent_dim, prefix_len, encoder_max_len, guide.lora_rank
    guide_steps: int = 30  # reconstruction updates of the guide
    guide_batch_size: int = 8  # (x, y) rows per guide update
    guide_lr: float = 1e-3  # guide learning rate (LoRA + projection + prefix map)
    encoder: str | None = None  # guide encoder and BERTScore encoder; None = MiniLM
    rm: str | None = None  # a reward model (experiments/reward_model.py export) scored too
    train: ex.TrainConfig = ex.TrainConfig(steps=16, batch_size=4, save_every=8,
                                           optim=OptimConfig(lr=5e-4))


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    if cfg.reference != "cache":
        raise ConfigError("ld_align computes each round's reference log-probs itself: "
                          "reference=cache only")
    mesh = ex.mesh_of(cfg)
    run_dir = ex.open_run("ld_align", cfg)

    # data: prompts with one reference answer each (a pair's `chosen` is the reference)
    train, evals = ex.load_splits("preference", cfg.data, cfg.data_format, cfg.eval_data,
                                  skip_bad_records=cfg.skip_bad_records, to_record=reference_record)
    train, evals = train[: cfg.max_examples or None], evals[: cfg.eval_examples or None]

    policy, tok = ex.load_policy(cfg.model, dtype=cfg.dtype, mesh=mesh, lora_rank=cfg.lora_rank,
                                 lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)
    tcfg = cfg.tokenize_config()
    length = -(-(cfg.max_prompt_len + cfg.max_completion_len) // cfg.pad_multiple) * cfg.pad_multiple

    # held-out: greedy answers, BERTScore-F1 to the reference (+ the reward model's score)
    similarity = compose.similarity_scorer("bertscore_f1", tok, cfg.encoder, None, mesh)
    rm = None
    if cfg.rm is not None:
        from align_jax.rewards.reward_model import load_reward_model
        rm = load_reward_model(cfg.rm, mesh=mesh, progress=False)
    eval_sampling = SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens, greedy=True)

    def held_out(model):
        m, answers, _ = evaluate(model, tok, evals, similarity, None, eval_sampling, mesh=mesh)
        if rm is not None:
            m["rm_score"] = float(rm([prompt_text(r["prompt"]) for r in evals], answers).mean())
        return {"metrics": m, "answers": answers}

    before = ex.evaluate_before(run_dir, lambda: held_out(policy))

    # the guide: trained on the references + the initial policy's samples (= round 0's losers,
    # which the loop's round 0 reads back)
    phi = None
    if cfg.ld.weight != "none":
        losers = sample_losers(run_dir / "rounds/round_0", policy, tok, train, cfg.sampling,
                               cfg.train.seed * 1000 + 1, mesh)
        guide, gtok, enc_tok = load_guide(cfg.guide, cfg.model, cfg.encoder, cfg.dtype, mesh,
                                          cfg.train.seed)
        rows = [(r["prompt"], r["reference"]) for r in train] + \
               [(r["prompt"], y) for r, y in zip(train, losers)]
        gcfg = GuideTrainConfig(steps=cfg.guide_steps, batch_size=cfg.guide_batch_size,
                                seed=cfg.train.seed, save_every=cfg.train.save_every,
                                progress=cfg.train.progress, optim=OptimConfig(lr=cfg.guide_lr))
        guide = train_guide(guide, rows, ["reference"] * len(train) + ["sample"] * len(train),
                            gtok, enc_tok, tcfg, gcfg, run_dir / "guide", mesh=mesh)
        phi = make_latent_fn(guide, enc_tok, mesh=mesh)

    # the rounds, in the one loop
    loss_fn = make_loss_fn(cfg.objective, cfg.chunk_size, completion_len=cfg.max_completion_len)
    policy, evals_by_round = train_ld_align(
        policy, train, tok, tcfg, length, loss_fn, cfg.train, cfg.ld, cfg.sampling, run_dir,
        phi=phi, held_out=held_out, mesh=mesh, ref_batch_size=cfg.ref_batch_size,
        chunk_size=cfg.chunk_size)
    after = evals_by_round[max(evals_by_round)]
    _rounds_table(run_dir, before, evals_by_round)
    return ex.finish(run_dir, f"LD-Align (weight={cfg.ld.weight})", before, after,
                     [prompt_text(r["prompt"]) for r in evals], order=range(min(10, len(evals))),
                     policy=policy, tokenizer=tok, export=cfg.export)


def _rounds_table(run_dir: Path, before: dict, evals_by_round: dict) -> None:
    keys = [k for k in ("sim_mean", "rm_score", "len_words") if k in before["metrics"]]
    lines = ["| after | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
             "| initial policy | " + " | ".join(f"{before['metrics'][k]:.4f}" for k in keys) + " |"]
    for r in sorted(evals_by_round):
        m = evals_by_round[r]["metrics"]
        lines.append(f"| round {r} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    (run_dir / "rounds.md").write_text("# held-out, before and after each round\n\n" +
                                       "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
