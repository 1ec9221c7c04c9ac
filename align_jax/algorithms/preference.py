"""The offline preference methods (DPO family, KTO, RPO, listwise) as a batch source and an update
for the one loop (``align_jax.train.loop``): policy loading (optionally LoRA), the reference (cached
once / per batch / adapters off), held-out evaluation.

The step itself is ``preference_step`` (one jitted step per family, any registered member by
config); the reference cache is ``reference_cache``, the dataset ``align_jax.data.pref_data``; the
experiment glue (run directory, artefacts) is ``align_jax.experiment``.

Resume == uninterrupted: the data order is the loader's (seed, epoch) permutation, its position is
checkpointed with the train state (every ``save_every`` optimizer updates), the reference is either
read back from its cache or rebuilt from the INITIAL weights (copied before any checkpoint is
restored), and the metrics log is truncated to the restored step.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.algorithms.preference_step import RefModelBundle, lora_reference, needs_reference
from align_jax.algorithms.reference_cache import precompute_reference
from align_jax.data.loader import DataLoader
from align_jax.data.pref_data import PrefData
from align_jax.errors import ConfigError
from align_jax.sanity import check_config
from align_jax.sharding import place_batch
from align_jax.train import report
from align_jax.train.base_model import base_identity
from align_jax.train.loop import LoopConfig, eval_once, every, run_loop
from align_jax.train.metrics import add_sum_count, compute
from align_jax.train.optim import OptimConfig
from align_jax.train.state import create_train_state, has_lora
from align_jax.train.step import make_eval_step, make_train_step

REFERENCE_MODES = ("cache", "batch")


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The loop's knobs (``train.loop.LoopConfig``) plus what the preference source adds."""

    steps: int = 20  # optimizer updates
    batch_size: int = 4  # examples (pairs / items / lists) per micro-batch, global
    eval_every: int = 0  # also evaluate every N updates; 0 = only before and after
    optim: OptimConfig = OptimConfig(schedule="cosine")  # grad_accum = micro-batches per update


@dataclasses.dataclass
class TrainResult:
    policy: Any  # the trained module
    state: Any  # the final TrainState
    before: dict[str, float]
    after: dict[str, float]
    run_dir: Path


# ----------------------------------------------------------------------------- setup


def load_policy(model: str | None, *, dtype: str = "float32", mesh=None, lora_rank: int = 0,
                lora_alpha: float = 16.0, lora_targets: tuple[str, ...] = ("wq", "wv"),
                remat: bool = False):
    """(Decoder, tokenizer); ``lora_rank > 0`` adds adapters (only they are trained)."""
    from align_jax.models import load_causal_lm

    kw: dict[str, Any] = {"remat": remat}
    if lora_rank:
        kw.update(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=tuple(lora_targets))
    model, tok = load_causal_lm(model, dtype=dtype, mesh=mesh, **kw)
    if tok is None:
        raise ConfigError(f"model={model}: no tokenizer files next to the weights; preference "
                          "training needs one")
    return model, tok


def attach_reference(model, data: PrefData | None, loss_cfg, mode: str, *, batch_size: int = 8,
                     mesh=None, chunk_size: int | None = None, cache_dir=None,
                     use_cache: bool = True, compiler_options: dict | None = None):
    """``mode="cache"``: the reference values of every example, read from / written to the disk
    cache, attached to ``data`` (call BEFORE training: the step donates the weights). Other modes and
    reference-free losses return ``data`` unchanged."""
    if mode not in REFERENCE_MODES:
        raise ConfigError(f"reference={mode!r}: expected one of {REFERENCE_MODES}")
    if data is None or mode != "cache" or not needs_reference(loss_cfg):
        return data
    ref_model = lora_reference(model) if has_lora(model) else model
    t0 = time.perf_counter()
    res = precompute_reference(ref_model, data, batch_size=batch_size, mesh=mesh,
                               chunk_size=chunk_size, cache_dir=cache_dir, use_cache=use_cache,
                               compiler_options=compiler_options)
    how = "reused" if res.hit else f"computed in {time.perf_counter() - t0:.1f}s"
    print(f"[align_jax] reference log-probs of {len(data)} examples {how}: {res.path}")
    return data.with_arrays(**res.arrays)


# ----------------------------------------------------------------------------- evaluation


def _usable_batch(n: int, want: int, mesh) -> int:
    shards = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
    b = min(want, n) // shards * shards
    if b == 0:
        raise ConfigError(f"{n} examples cannot fill one batch sharded {shards} ways (fewer "
                          "examples than devices on the data/fsdp axes)")
    return b


def evaluate(eval_step, state, data: PrefData, batch_size: int, mesh=None) -> dict[str, float]:
    """Metrics over ``data`` in dataset order (full batches only: fixed shapes; the remainder of
    fewer than one batch is left out and counted in ``eval/examples``)."""
    b = _usable_batch(len(data), batch_size, mesh)
    acc: dict = {}
    n = len(data) // b * b
    for s in range(0, n, b):
        acc = add_sum_count(acc, eval_step(state, place_batch(data.batch(np.arange(s, s + b)),
                                                              mesh)))
    out = compute(acc)
    _check_overflow(out.get("tokens/overflow", 0.0))
    out["examples"] = int(n)  # a count
    return out


def _check_overflow(n: float) -> None:
    if n > 0:  # never drop response tokens silently
        raise ValueError(f"{n:g} response tokens fell outside the loss_fn's completion_len window; "
                         "set it to at least the tokeniser's max_completion_len (or None)")


def _tokens(batch: dict) -> int:
    return int(sum(np.asarray(v).sum() for k, v in batch.items() if k.endswith("attention_mask")))


# ----------------------------------------------------------------------------- loop


class PreferenceSource:
    """Batch source of the offline methods: ``grad_accum`` micro-batches of dataset indices per
    update, in the loader's (seed, epoch) order."""

    def __init__(self, data: PrefData, cfg: TrainConfig, mesh=None):
        self.loader = DataLoader(list(range(len(data))), cfg.batch_size, seed=cfg.seed,
                                 shuffle=True, collate_fn=data.batch)
        self.grad_accum, self.mesh = cfg.optim.grad_accum, mesh
        self.tokens = 0  # tokens of the latest step (throughput)

    def next(self, state, step: int):
        host = [next(self.loader) for _ in range(self.grad_accum)]
        self.tokens = sum(_tokens(hb) for hb in host)
        return [place_batch(hb, self.mesh) for hb in host], {}


def make_preference_update(step_fn):
    """One optimizer update over the micro-batches (``optax.MultiSteps`` averages them)."""

    def update(state, micro_batches):
        acc: dict = {}
        for b in micro_batches:
            state, m = step_fn(state, b)
            acc = add_sum_count(acc, m)
        stats = {f"train/{k}": v for k, v in compute(acc).items()}  # syncs the device
        _check_overflow(stats.get("train/tokens/overflow", 0.0))
        return state, stats

    return update


def train_preference(model, train: PrefData, loss_fn: Callable, cfg: TrainConfig, run_dir, *,
                     mesh=None, reference: str = "cache", eval_data: PrefData | None = None,
                     compiler_options: dict | None = None, name: str = "preference",
                     step_callback: Callable | None = None) -> TrainResult:
    """Train ``model`` on ``train`` with ``loss_fn`` (``preference_step.make_loss_fn``) in the one
    loop; held-out metrics before (``eval_before.json``, kept on resume) and after
    (``eval_after.json``), and every ``eval_every`` steps; ``curves.png``.

    ``reference="batch"`` (full fine-tuning): a frozen copy of the initial weights is forwarded every
    step. With LoRA the reference is the model with adapters off, and with ``"cache"`` the batches
    carry precomputed values (see :func:`attach_reference`), so no copy is made in either case."""
    check_config(cfg)
    run_dir = Path(run_dir)
    opt = cfg.optim.make(cfg.steps)
    state, bundle = create_train_state(model, opt, cfg.seed, mesh)
    if reference == "batch" and not has_lora(model):
        # copy BEFORE any restore: the reference is the initial model, not the resumed one
        bundle = RefModelBundle.wrap(bundle, jax.tree.map(jnp.copy, state.params))
    base = base_identity(model, bundle.frozen)  # LoRA: checkpoints hold the adapters only
    step_fn = make_train_step(loss_fn, opt, bundle, mesh, compiler_options=compiler_options)
    eval_step = make_eval_step(loss_fn, bundle, mesh, compiler_options=compiler_options)
    source = PreferenceSource(train, cfg, mesh)

    def held_out(state):
        return evaluate(eval_step, state, eval_data, cfg.batch_size, mesh)

    before: dict[str, float] = {}

    def before_training():  # the run dir is locked by now; a resumed run keeps its "before"
        nonlocal before
        if eval_data is not None:
            before = eval_once(run_dir / "eval_before.json", lambda: held_out(state))
            print("[align_jax] eval before:", _fmt(before))

    def throughput(step, state, stats):
        loader = source.loader
        stats.update({"tokens_per_s": source.tokens / max(stats["time/step_s"], 1e-9),
                      "epoch": loader.epoch + loader.index / max(loader.steps_per_epoch, 1)})

    hooks = [throughput]
    if eval_data is not None:
        hooks.append(every(cfg.eval_every, lambda step, st: held_out(st)))

    def postfix(stats):  # this step's training batch; a tie counts 0.5 (losses.accuracy)
        acc = {name: f"{stats[k]:.2f}" for k, name in (("train/rewards/accuracies", "pair_acc"),
                                                        ("train/rewards/top1_accuracy", "top1_acc"))
               if k in stats}
        return {"loss": f"{stats['train/loss']:.4f}", **acc}

    state = run_loop(state, source, make_preference_update(step_fn), run_dir, cfg, label=name,
                     postfix=postfix, hooks=hooks, start_hook=before_training,
                     step_callback=step_callback, base=base)

    after: dict[str, float] = {}
    if eval_data is not None:
        after = held_out(state)
        report.write_json(run_dir / "eval_after.json", after)
        print("[align_jax] eval after: ", _fmt(after))
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists():
        report.plot_curves(metrics_file, run_dir / "curves.png", title=name)
    policy = (bundle.policy(state.params) if isinstance(bundle, RefModelBundle)
              else bundle.merge(state.params))
    return TrainResult(policy, state, before, after, run_dir)


def _fmt(m: dict) -> str:
    return ", ".join(f"{k}={report.fmt_value(v)}" for k, v in m.items() if k in (
        "loss", "rewards/accuracies", "rewards/margins", "rewards/top1_accuracy", "rpo/row_loss",
        "kl", "examples"))
