"""What every experiment file repeats, in one place, so each file reads like its paper's method
section: the run directory and its ``config.json``, the data and its held-out split, the
held-out evaluation before (``eval_before.json``, kept when a run resumes) and after
(``eval_after.json``), the curves (``curves.png``), the before/after table (``samples.md``; the
offline preference runs have no samples and write ``summary.md``), and ``export/``.
``metrics.jsonl`` and ``checkpoints/`` are the loop's (``align_jax.train.loop``).

The shared knobs are declared once, in the configs the experiments nest: the optimizer
(``train.optim.OptimConfig``), the loop (``train.loop.LoopConfig`` and the method's extension of
it), the sampler (``sampling.SamplingConfig``) and the objective (the loss family's config);
their leaves are also reachable by short keys (``lr=``, ``steps=``, ``k=``: ``align_jax.cli``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from align_jax import sharding
from align_jax.algorithms.online_loop import OnlineLoopConfig, balance_groups, train_online
from align_jax.algorithms.preference import (TrainConfig, attach_reference, load_policy,
                                             train_preference)
from align_jax.algorithms.refalign import RefAlignConfig
from align_jax.algorithms.sft import SFTConfig, warm_up
from align_jax.cli import config_dict
from align_jax.data import as_record, load_bundled, load_examples, load_report
from align_jax.data.pref_data import PrefData
from align_jax.data.tokenize import TokenizeConfig, count_truncated
from align_jax.sampling.sampler import SamplingConfig
from align_jax.sanity import check_context
from align_jax.train import report
from align_jax.train.loop import eval_once
from align_jax.train.optim import OptimConfig


def open_run(name: str, cfg, run_dir: Path | None = None) -> Path:
    """The run directory (``runs/<name>-<time>``, or ``cfg.out_dir``; ``run_dir`` when the caller
    made it) with the resolved config saved as ``config.json`` (what ``config=RUN_DIR`` loads)."""
    if run_dir is None:
        run_dir = report.make_run_dir(name, cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[align_jax] run directory: {run_dir}")
    report.write_json(run_dir / "config.json", config_dict(cfg))
    return run_dir


def mesh_of(cfg):
    sharding.maybe_initialize_distributed()
    return sharding.make_mesh(cfg.mesh)


def held_out_split(rows: Sequence, frac: float = 0.1) -> tuple[list, list]:
    """(train, held-out): the first ``frac`` of the rows (at least one) are held out."""
    rows = list(rows)
    cut = max(1, int(len(rows) * frac)) if len(rows) > 1 else 0
    return rows[cut:], rows[:cut]


def load_splits(bundled: str, data: str | None, data_format: str = "auto",
                eval_data: str | None = None, skip_bad_records: bool = False,
                to_record: Callable | None = None) -> tuple[list, list]:
    """(train, held-out) examples: the bundled set's own splits, or ``data`` (+ ``eval_data``,
    else :func:`held_out_split`). ``skip_bad_records``: malformed records are counted
    (data_report.json) and skipped instead of stopping the run. ``to_record`` maps each example
    (e.g. :func:`~align_jax.data.as_record` for the online methods)."""
    if data is None:
        train, evals = load_bundled(bundled, split="train"), load_bundled(bundled, split="eval")
    else:
        rows = load_examples(data, data_format, skip_bad_records=skip_bad_records).examples
        if eval_data:
            train, evals = rows, load_examples(eval_data, data_format,
                                               skip_bad_records=skip_bad_records).examples
        else:
            train, evals = held_out_split(rows)
    if to_record is not None:
        train, evals = [to_record(e) for e in train], [to_record(e) for e in evals]
    return list(train), list(evals)


def interleave(rows: Sequence, is_a: Callable[[Any], bool]) -> list:
    """Rows of the two kinds alternated (a, b, a, b, ..., then the rest), so that any prefix of
    a held-out slice is balanced (the safety set: risky and benign prompts)."""
    a = [r for r in rows if is_a(r)]
    b = [r for r in rows if not is_a(r)]
    return [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]


def evaluate_before(run_dir: Path, evaluate: Callable[[], dict]) -> dict:
    """``{"metrics", "answers"}`` of the initial policy (read back when the run resumes)."""
    before = eval_once(run_dir / "eval_before.json", evaluate)
    print("[align_jax] before:", report.fmt_metrics(before["metrics"]))
    return before


def finish(run_dir: Path, title: str, before: dict, after: dict, prompts: Sequence[str], *,
           columns: dict | None = None, order: Sequence[int] | None = None, policy=None,
           tokenizer=None, export: bool = False,
           references: Sequence[str] | None = None) -> dict:
    """``eval_after.json``, ``curves.png``, ``samples.md`` (summary + one row per prompt given,
    in ``order`` if given: prompt | reference | before | after | ``columns``) and, with
    ``export``, the final policy as HF safetensors in ``export/``."""
    report.write_json(run_dir / "eval_after.json", after)
    print("[align_jax] after: ", report.fmt_metrics(after["metrics"]))
    report.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title=title)
    order = list(order) if order is not None else list(range(len(prompts)))
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    summary = report.summary_table(before["metrics"], after["metrics"])
    table = report.sample_table(pick(prompts), pick(before["answers"]), pick(after["answers"]),
                                {k: pick(v) for k, v in (columns or {}).items()},
                                references=pick(references) if references is not None else None)
    (run_dir / "samples.md").write_text(f"# {title}: before / after\n\n{summary}\n{table}")
    if export:
        from align_jax.models import export_hf

        export_hf(policy, tokenizer, run_dir / "export")
    print(summary)
    print(f"[align_jax] done: {run_dir}")
    return {"before": before["metrics"], "after": after["metrics"], "run_dir": str(run_dir)}


def run_seeds(name: str, cfg, run: Callable) -> dict:
    """``run(cfg, run_dir)`` once per seed of ``cfg.seeds`` (sub-directories ``seed<s>``) and
    ``seeds.md`` (mean ± sd of every held-out metric); a single run when ``seeds`` is empty."""
    if not cfg.seeds:
        return run(cfg, report.make_run_dir(name, cfg.out_dir))
    root = report.make_run_dir(name, cfg.out_dir)
    report.write_json(root / "config.json", config_dict(cfg))
    runs = [run(dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, seed=s), seeds=()),
                root / f"seed{s}") for s in cfg.seeds]
    table = report.seed_table([{"seed": s, **r} for s, r in zip(cfg.seeds, runs)])
    (root / "seeds.md").write_text(f"# {name}: {len(runs)} seeds, held-out\n\n{table}")
    print(table)
    return {"runs": runs, "run_dir": str(root)}


# ----------------------------------------------------------------------------- online (RefAlign)


@dataclasses.dataclass(frozen=True)
class OnlineExperiment:
    """What the on-policy experiments share (each file subclasses it; a field redeclared there
    only changes its default)."""

    SHORT_GROUPS: ClassVar[tuple[str, ...]] = ("objective", "sampling", "optim", "loop")

    model: str | None = None  # None = SmolLM2-135M-Instruct GGUF (offline default)
    dtype: str = "float32"
    data: str | None = None  # None = the bundled set; else a file (see data_format)
    data_format: str = "auto"
    skip_bad_records: bool = False  # count and skip malformed records instead of stopping
    similarity: str = "bertscore_f1"  # a registered similarity scorer (align_jax.rewards)
    encoder: str | None = None  # None = all-MiniLM-L6-v2 from its wheel
    objective: RefAlignConfig = RefAlignConfig(k=2)  # K samples per prompt, advantage, ...
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=48, temperature=1.0)
    optim: OptimConfig = OptimConfig(lr=2e-5)
    loop: OnlineLoopConfig = OnlineLoopConfig(steps=30, prompts_per_step=4, save_every=10,
                                              kl_every=5)
    # supervised warm-up on the references before the on-policy method (sft.steps=N; 0 = none)
    sft: SFTConfig = SFTConfig()
    eval_prompts: int = 24
    mesh: str = "-1,1,1"
    out_dir: str | None = None
    export: bool = False


def train_between_evals(cfg: OnlineExperiment, run_dir: Path, policy, tokenizer, records,
                        reward_fn, held_out: Callable, *, mesh=None, label: str,
                        objective=None, sft_records=None) -> tuple[dict, Any, dict]:
    """(before, trained policy, after): the held-out evaluation of the initial policy (kept when
    the run resumes), the supervised warm-up if ``cfg.sft.steps`` (in ``<run>/sft``, evaluated
    into ``eval_sft.json``; on ``sft_records``, default ``records``), the on-policy training in
    the one loop, the evaluation of the result."""
    balance_groups(records, cfg.loop.balance_by)  # a field no record has fails before any work
    before = evaluate_before(run_dir, lambda: held_out(policy))
    if cfg.sft.steps:
        policy = warm_up(policy, tokenizer, records if sft_records is None else sft_records,
                         cfg.sft, run_dir / "sft", mesh=mesh,
                         seed=cfg.loop.seed, progress=cfg.loop.progress)
        after_sft = eval_once(run_dir / "eval_sft.json", lambda: held_out(policy))
        print("[align_jax] after the warm-up:", report.fmt_metrics(after_sft["metrics"]))
    policy, _ = train_online(policy, tokenizer, records, reward_fn, rcfg=cfg.objective,
                             sampling=cfg.sampling, optim=cfg.optim, loop=cfg.loop,
                             run_dir=run_dir, mesh=mesh, objective=objective, label=label)
    return before, policy, held_out(policy)


# ----------------------------------------------------------------------------- offline preference


@dataclasses.dataclass(frozen=True)
class PreferenceExperiment:
    """What every offline preference experiment shares (each file subclasses it and adds its
    ``objective``). Defaults: SmolLM2-135M-Instruct + a bundled dataset, sized for a 2-core CPU."""

    SHORT_GROUPS: ClassVar[tuple[str, ...]] = ("train", "objective")

    model: str | None = None  # None = SmolLM2-135M-Instruct GGUF (offline default); HF dir / id
    dtype: str = "float32"
    lora_rank: int = 0  # > 0: train LoRA adapters only; the reference is the adapters-off model
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("wq", "wv")
    remat: bool = False  # recompute layer activations in the backward pass (less memory)
    data: str | None = None  # None = the bundled set; else JSONL / Parquet / HF dir (data_format)
    data_format: str = "auto"
    eval_data: str | None = None  # None = the bundled eval split / the first 10% of `data`
    skip_bad_records: bool = False  # count and skip malformed records instead of stopping
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
    mesh: str = "-1,1,1"
    out_dir: str | None = None  # re-using a run dir resumes it
    export: bool = False  # HF safetensors + tokenizer of the final policy in <run>/export
    train: TrainConfig = TrainConfig(steps=8, save_every=50)  # loop + optimizer (train.optim)

    def tokenize_config(self) -> TokenizeConfig:
        return TokenizeConfig(max_prompt_len=self.max_prompt_len,
                              max_completion_len=self.max_completion_len,
                              pad_multiple=self.pad_multiple)


def run_preference(name: str, cfg: PreferenceExperiment, loss_cfg, kind: str, train_examples,
                   eval_examples, *, kl: bool = False,
                   attach: Callable[[PrefData], PrefData] | None = None) -> dict[str, Any]:
    """Load the policy, build the datasets, attach the reference (and ``attach``'s arrays, e.g.
    RPO prompt embeddings), train in the one loop, evaluate, write the artefacts, optionally
    export. Returns {before, after, run_dir}."""
    mesh = mesh_of(cfg)
    run_dir = open_run(name, cfg)
    model, tok = load_policy(cfg.model, dtype=cfg.dtype, mesh=mesh, lora_rank=cfg.lora_rank,
                             lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                             remat=cfg.remat)
    out = train_policy(name, cfg, loss_cfg, kind, model, tok, train_examples, eval_examples,
                       run_dir, mesh=mesh, kl=kl, attach=attach)
    return {k: out[k] for k in ("before", "after", "run_dir")}


def train_policy(name: str, cfg: PreferenceExperiment, loss_cfg, kind: str, model, tok,
                 train_examples, eval_examples, run_dir: Path, *, mesh=None, kl: bool = False,
                 attach: Callable[[PrefData], PrefData] | None = None) -> dict[str, Any]:
    """:func:`run_preference` on a policy already loaded (``model``, e.g. the previous round's of
    a self-play loop; its reference is itself) in an open ``run_dir``. Returns {before, after,
    run_dir, policy}: ``policy`` is the trained module (the input's buffers are donated)."""
    from align_jax.algorithms.preference_step import make_loss_fn

    # the loss config derived from the experiment's is a record beside config.json
    report.write_json(run_dir / "loss_config.json", dataclasses.asdict(loss_cfg))
    check_context(model.cfg.max_position_embeddings, cfg.max_prompt_len, cfg.max_completion_len,
                  "max_prompt_len + max_completion_len")
    train_examples = list(train_examples)[: cfg.max_examples or None]
    eval_examples = list(eval_examples)[: cfg.eval_examples or None]
    print(f"[align_jax] {len(train_examples)} training / {len(eval_examples)} held-out examples")
    tcfg, seed = cfg.tokenize_config(), cfg.train.seed
    train = PrefData(kind, train_examples, tok, tcfg, kl=kl, kl_seed=seed)
    evald = PrefData(kind, eval_examples, tok, tcfg, kl=kl, kl_seed=seed) if eval_examples else None
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
    res = train_preference(model, train, loss_fn, cfg.train, run_dir, mesh=mesh,
                           reference=cfg.reference, eval_data=evald, name=name)
    table = report.summary_table(res.before, res.after) if res.before else ""
    (run_dir / "summary.md").write_text(f"# {name}: held-out metrics before / after\n\n{table}")
    if cfg.export:
        from align_jax.models import export_hf

        export_hf(res.policy, tok, run_dir / "export")
    print(table)
    print(f"[align_jax] done: {run_dir}")
    return {"before": res.before, "after": res.after, "run_dir": str(run_dir), "policy": res.policy}


__all__ = ["OnlineExperiment", "PreferenceExperiment", "train_between_evals", "as_record", "evaluate_before", "finish", "held_out_split",
           "load_splits", "mesh_of", "open_run", "run_preference", "run_seeds", "train_policy"]
