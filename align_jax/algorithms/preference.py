"""The offline preference-training loop (DPO family, KTO, RPO, listwise) and the glue the experiment
files share: policy loading (optionally LoRA), dataset splits, the reference (cached once / per batch /
adapters off), evaluation before/after, checkpoints + resume, metrics, curves, export.

The step itself is ``preference_step`` (one jitted step per family, any member by config); the
reference cache and the index→batch logic are in ``reference_cache``.

Resume == uninterrupted: the data order is the loader's (seed, epoch) permutation, its position is
checkpointed with the train state (every ``save_every`` optimizer updates), the reference is either
read back from its cache or rebuilt from the INITIAL weights (copied before any checkpoint is
restored), and the metrics log is truncated to the restored step.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.algorithms.preference_step import RefModelBundle, lora_reference, needs_reference
from align_jax.algorithms.reference_cache import PrefData, precompute_reference
from align_jax.data import load_report
from align_jax.data.loader import DataLoader
from align_jax.data.tokenize import count_truncated
from align_jax.errors import ConfigError
from align_jax.sanity import check_config, check_context
from align_jax.sharding import place_batch
from align_jax.train import report
from align_jax.train.metrics import add_sum_count, compute
from align_jax.train.optim import make_optimizer
from align_jax.train.session import TrainingSession
from align_jax.train.state import create_train_state, has_lora
from align_jax.train.step import make_eval_step, make_train_step

REFERENCE_MODES = ("cache", "batch")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 20  # optimizer updates
    batch_size: int = 4  # examples (pairs / items / lists) per micro-batch, global
    grad_accum: int = 1  # micro-batches per update (optax.MultiSteps averages their gradients)
    optimizer: str = "adamw"
    lr: float = 1e-5
    schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 = evaluate only before and after training
    progress: bool = True
    max_nonfinite_steps: int = 3  # stop after this many non-finite updates in a row


@dataclasses.dataclass
class TrainResult:
    policy: Any  # the trained module
    state: Any  # the final TrainState
    before: dict[str, float]
    after: dict[str, float]
    run_dir: Path


# ----------------------------------------------------------------------------- experiment glue


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Fields every preference experiment shares (each experiment file subclasses it with its loss
    knobs). Defaults: SmolLM2-135M-Instruct + a bundled dataset, sized for a 2-core CPU."""

    model: str | None = None  # None = SmolLM2-135M-Instruct GGUF (offline default); HF dir / id
    dtype: str = "float32"
    lora_rank: int = 0  # > 0: train LoRA adapters only; the reference is the adapters-off model
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("wq", "wv")
    remat: bool = False  # recompute layer activations in the backward pass (less memory)
    data: str | None = None  # None = the bundled set; else JSONL / Parquet / HF dir (data_format)
    data_format: str = "auto"
    eval_data: str | None = None  # None = the bundled eval split / the first 10% of `data`
    max_examples: int | None = 32  # training examples kept (CPU default); None = all
    eval_examples: int | None = 8  # held-out examples evaluated before/after; None = all
    reference: str = "cache"  # cache (precomputed once, on disk) | batch (forwarded every step)
    cache_dir: str | None = None  # None = $ALIGN_JAX_CACHE or ~/.cache/align_jax
    ref_batch_size: int = 8  # examples per forward when precomputing the reference
    max_prompt_len: int = 64  # prompt tokens kept (left-truncated)
    max_completion_len: int = 64  # response tokens kept (right-truncated)
    pad_multiple: int = 32  # sequence lengths are padded up to a multiple of this
    fixed_length: bool = True  # pad every batch to the dataset's longest: one shape, one compile
    chunk_size: int | None = None  # log-prob chunking over the sequence (big vocabularies)
    steps: int = 8  # optimizer updates
    batch_size: int = 4  # examples per micro-batch (global, across devices)
    grad_accum: int = 1  # micro-batches averaged per optimizer update
    optimizer: str = "adamw"  # adamw | adafactor | rmsprop | sgd
    lr: float = 1e-5  # peak learning rate
    schedule: str = "cosine"  # cosine | linear | constant (decays over `steps`)
    warmup_steps: int = 0  # linear warm-up updates
    weight_decay: float = 0.0  # decoupled weight decay
    grad_clip: float | None = 1.0
    mesh: str = "-1,1,1"
    seed: int = 0
    save_every: int = 50
    eval_every: int = 0  # also evaluate every N updates; 0 = only before and after
    max_nonfinite_steps: int = 3  # non-finite updates in a row before the run stops
    skip_bad_records: bool = False  # count and skip malformed records instead of stopping
    out_dir: str | None = None  # re-using a run dir resumes it
    export: bool = False  # HF safetensors + tokenizer of the final policy in <run>/export

    def train_config(self) -> "TrainConfig":
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, grad_accum=self.grad_accum,
                           optimizer=self.optimizer, lr=self.lr, schedule=self.schedule,
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip, seed=self.seed, save_every=self.save_every,
                           eval_every=self.eval_every, max_nonfinite_steps=self.max_nonfinite_steps)

    def tokenize_config(self):
        from align_jax.data import TokenizeConfig

        return TokenizeConfig(max_prompt_len=self.max_prompt_len,
                              max_completion_len=self.max_completion_len,
                              pad_multiple=self.pad_multiple)


def run_experiment(name: str, cfg: ExperimentConfig, loss_cfg, kind: str, train_examples,
                   eval_examples, *, kl: bool = False,
                   attach: Callable[[PrefData], PrefData] | None = None) -> dict:
    """Load the policy, build the datasets, attach the reference (and ``attach``'s arrays, e.g.
    RPO prompt embeddings), train, evaluate, plot, optionally export. Returns a summary dict."""
    from align_jax import sharding
    from align_jax.algorithms.preference_step import make_loss_fn
    from align_jax.cli import config_dict

    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh(cfg.mesh)
    run_dir = report.make_run_dir(name, cfg.out_dir)
    print(f"[align_jax] run directory: {run_dir}")
    # config.json holds exactly the experiment's Config (what `config=RUN_DIR` loads back); the
    # loss config derived from it is a record beside it
    report.write_json(run_dir / "config.json", config_dict(cfg))
    report.write_json(run_dir / "loss_config.json", dataclasses.asdict(loss_cfg))
    model, tok = load_policy(cfg.model, dtype=cfg.dtype, mesh=mesh, lora_rank=cfg.lora_rank,
                             lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                             remat=cfg.remat)
    check_context(model.cfg.max_position_embeddings, cfg.max_prompt_len, cfg.max_completion_len,
                  "max_prompt_len + max_completion_len")
    train_examples = list(train_examples)[: cfg.max_examples or None]
    eval_examples = list(eval_examples)[: cfg.eval_examples or None]
    print(f"[align_jax] {len(train_examples)} training / {len(eval_examples)} held-out examples")
    tcfg = cfg.tokenize_config()
    train = PrefData(kind, train_examples, tok, tcfg, kl=kl, kl_seed=cfg.seed)
    evald = PrefData(kind, eval_examples, tok, tcfg, kl=kl, kl_seed=cfg.seed) if eval_examples else None
    for role, d in (("train", train), ("eval", evald)):
        if d is not None:  # truncation is counted in the data report, never silent
            load_report.note_truncation(role, count_truncated(tok, d.examples, tcfg))
    if cfg.fixed_length:
        length = max([train.max_length()] + ([evald.max_length()] if evald is not None else []))
        train = dataclasses.replace(train, length=length)
        evald = dataclasses.replace(evald, length=length) if evald is not None else None
    if attach is not None:
        train = attach(train)
        evald = attach(evald) if evald is not None else None
    kw = dict(batch_size=cfg.ref_batch_size, mesh=mesh, chunk_size=cfg.chunk_size,
              cache_dir=cfg.cache_dir)
    train = attach_reference(model, train, loss_cfg, cfg.reference, **kw)
    evald = attach_reference(model, evald, loss_cfg, cfg.reference, **kw)
    # the LM head only on response positions: responses are truncated to max_completion_len
    loss_fn = make_loss_fn(loss_cfg, cfg.chunk_size, completion_len=cfg.max_completion_len)
    res = train_preference(model, train, loss_fn, cfg.train_config(),
                           run_dir, mesh=mesh, reference=cfg.reference, eval_data=evald, name=name)
    table = summary_table(res.before, res.after) if res.before else ""
    (run_dir / "summary.md").write_text(f"# {name}: held-out metrics before / after\n\n{table}")
    if cfg.export:
        from align_jax.models import export_hf

        export_hf(res.policy, tok, run_dir / "export")
    print(table)
    print(f"[align_jax] done: {run_dir}")
    return {"before": res.before, "after": res.after, "run_dir": str(run_dir)}


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


def load_splits(bundled: str, data: str | None, data_format: str = "auto",
                eval_data: str | None = None, eval_frac: float = 0.1, max_eval: int | None = None,
                skip_bad_records: bool = False):
    """(train, eval) example lists: the bundled set's own splits, or ``data`` (+ ``eval_data``, else
    the first ``eval_frac`` of ``data`` held out). ``skip_bad_records``: malformed records are
    counted (data_report.json) and skipped instead of stopping the run."""
    from align_jax.data import load_bundled, load_examples

    if data is None:
        train, evals = load_bundled(bundled, split="train"), load_bundled(bundled, split="eval")
    else:
        rows = load_examples(data, data_format, skip_bad_records=skip_bad_records).examples
        if eval_data:
            train, evals = rows, load_examples(eval_data, data_format,
                                               skip_bad_records=skip_bad_records).examples
        else:
            cut = max(1, int(len(rows) * eval_frac)) if len(rows) > 1 else 0
            train, evals = rows[cut:], rows[:cut]
    return train, (evals[:max_eval] if max_eval else evals)


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
    out["examples"] = float(n)
    return out


def _check_overflow(n: float) -> None:
    if n > 0:  # never drop response tokens silently
        raise ValueError(f"{n:g} response tokens fell outside the loss_fn's completion_len window; "
                         "set it to at least the tokeniser's max_completion_len (or None)")


def _tokens(batch: dict) -> int:
    return int(sum(np.asarray(v).sum() for k, v in batch.items() if k.endswith("attention_mask")))


# ----------------------------------------------------------------------------- loop


def train_preference(model, train: PrefData, loss_fn: Callable, cfg: TrainConfig, run_dir, *,
                     mesh=None, reference: str = "cache", eval_data: PrefData | None = None,
                     compiler_options: dict | None = None, name: str = "preference",
                     step_callback: Callable | None = None) -> TrainResult:
    """Train ``model`` on ``train`` with ``loss_fn`` (a ``preference_step.make_*_loss_fn``).

    ``reference="batch"`` (full fine-tuning): a frozen copy of the initial weights is forwarded every
    step. With LoRA the reference is the model with adapters off, and with ``"cache"`` the batches
    carry precomputed values (see :func:`attach_reference`), so no copy is made in either case."""
    check_config(cfg)
    run_dir = Path(run_dir)
    opt = make_optimizer(cfg.optimizer, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.steps,
                         cfg.weight_decay, cfg.grad_clip, cfg.grad_accum)
    state, bundle = create_train_state(model, opt, cfg.seed, mesh)
    if reference == "batch" and not has_lora(model):
        # copy BEFORE any restore: the reference is the initial model, not the resumed one
        bundle = RefModelBundle.wrap(bundle, jax.tree.map(jnp.copy, state.params))
    step_fn = make_train_step(loss_fn, opt, bundle, mesh, compiler_options=compiler_options)
    eval_step = make_eval_step(loss_fn, bundle, mesh, compiler_options=compiler_options)
    eval_bs = cfg.batch_size

    # the run lock is taken before anything is written in run_dir (eval_before.json included)
    session = TrainingSession(run_dir, save_every=cfg.save_every, keep=cfg.keep_checkpoints,
                              max_nonfinite_steps=cfg.max_nonfinite_steps)
    bar = None
    before: dict[str, float] = {}
    before_file = run_dir / "eval_before.json"
    try:
        if eval_data is not None:
            if before_file.exists():  # resumed run: "before" is the initial policy's
                before = json.loads(before_file.read_text())
            else:
                before = evaluate(eval_step, state, eval_data, eval_bs, mesh)
                report.write_json(before_file, before)
            print("[align_jax] eval before:", _fmt(before))

        loader = DataLoader(list(range(len(train))), cfg.batch_size, seed=cfg.seed, shuffle=True,
                            collate_fn=train.batch)
        state, start = session.resume(state, loader)
        bar = report.progress_bar(cfg.steps, start, name, cfg.progress)
        for update in range(start, cfg.steps):
            t0 = time.perf_counter()
            acc: dict = {}
            ntok = 0
            for _ in range(cfg.grad_accum):
                hb = next(loader)
                ntok += _tokens(hb)
                state, m = step_fn(state, place_batch(hb, mesh))
                acc = add_sum_count(acc, m)
            stats = {f"train/{k}": v for k, v in compute(acc).items()}  # syncs the device
            _check_overflow(stats.get("train/tokens/overflow", 0.0))
            dt = time.perf_counter() - t0
            stats.update({"time/step_s": dt, "tokens_per_s": ntok / max(dt, 1e-9),
                          "epoch": loader.epoch + loader.index / max(loader.steps_per_epoch, 1)})
            if eval_data is not None and cfg.eval_every and (update + 1) % cfg.eval_every == 0:
                stats.update({f"eval/{k}": v for k, v in
                              evaluate(eval_step, state, eval_data, eval_bs, mesh).items()})
            session.end_step(update + 1, stats, state, final=update + 1 == cfg.steps)
            if bar is not None:
                bar.update(1)
                acc_key = next((k for k in ("train/rewards/accuracies",
                                            "train/rewards/top1_accuracy") if k in stats), None)
                bar.set_postfix(loss=f"{stats['train/loss']:.4f}",
                                acc=f"{stats[acc_key]:.2f}" if acc_key else "-")
            if step_callback is not None:
                step_callback(update + 1, stats)
    finally:
        if bar is not None:
            bar.close()
        session.close()

    after: dict[str, float] = {}
    if eval_data is not None:
        after = evaluate(eval_step, state, eval_data, eval_bs, mesh)
        report.write_json(run_dir / "eval_after.json", after)
        print("[align_jax] eval after: ", _fmt(after))
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists():
        report.plot_curves(metrics_file, run_dir / "curves.png", title=name)
    policy = (bundle.policy(state.params) if isinstance(bundle, RefModelBundle)
              else bundle.merge(state.params))
    return TrainResult(policy, state, before, after, run_dir)


def summary_table(before: dict, after: dict, keys=None) -> str:
    keys = keys or [k for k in before if not k.startswith(("time", "tokens/"))]
    lines = ["| eval metric | before | after |", "|---|---|---|"]
    for k in keys:
        lines.append(f"| {k} | {before.get(k, float('nan')):.4f} | {after.get(k, float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


def _fmt(m: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in m.items() if k in (
        "loss", "rewards/accuracies", "rewards/margins", "rewards/top1_accuracy", "rpo/row_loss",
        "kl", "examples"))
