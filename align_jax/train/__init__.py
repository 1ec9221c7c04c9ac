"""Training infrastructure: THE loop (``loop``), log-probs, train state, optimizers, step builders,
checkpoints, metrics."""

from align_jax.train.logprobs import (SeqLogps, reduce_sequence, sequence_logps,
                                      sequence_logps_from_logits, shifted_mask, token_logps,
                                      token_logps_from_logits)
from align_jax.train.metrics import (MetricAccumulator, MetricsLogger, add_sum_count, compute,
                                     read_jsonl, to_sum_count)
from align_jax.train.loop import LoopConfig, run_loop
from align_jax.train.optim import OptimConfig, Optimizer, decay_mask, make_optimizer, make_schedule
from align_jax.train.state import (ModelBundle, TrainState, abstract_train_state,
                                   create_train_state, has_lora, lora_off_params, split_model,
                                   tree_shardings)
from align_jax.train.step import lm_loss_fn, make_eval_step, make_train_step

__all__ = [
    "SeqLogps", "reduce_sequence", "sequence_logps", "sequence_logps_from_logits", "shifted_mask",
    "token_logps", "token_logps_from_logits", "MetricAccumulator", "MetricsLogger",
    "add_sum_count", "compute", "read_jsonl", "to_sum_count", "LoopConfig", "run_loop",
    "OptimConfig", "Optimizer", "decay_mask",
    "make_optimizer", "make_schedule", "ModelBundle", "TrainState", "abstract_train_state",
    "create_train_state", "has_lora", "lora_off_params", "split_model", "tree_shardings",
    "lm_loss_fn", "make_eval_step", "make_train_step",
]
