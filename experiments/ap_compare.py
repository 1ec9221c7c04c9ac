"""python experiments/ap_compare.py [rm=PATH] [loss=simpo|…] [selectors=…] [top=0.2] [key=value ...]

Does alignment-potential selection help (arXiv 2503.01864, ALGORITHMS.md §4)? One policy, one
budget (`steps` × `batch_size` pairs, same seed), trained once per selector on that selector's
subset of the SAME size — `ap` (M_AP = z(m_ex) − w·z(m_im)), `explicit`, `implicit_large`,
`implicit_small`, `random` (experiments/ap_select.py's margins; the implicit pass is cached) —
with the preference step of experiments/dpo.py (SimPO by default, any registered pairwise loss by
`loss=`). Each trained policy answers the held-out prompts (greedy); a reward model scores every
answer, and per selector the table gives the mean reward and the win rate against the initial
policy's answer to the same prompt (ties count ½).

    python experiments/ap_compare.py                              # bundled pairs, SmolLM2, SimPO
    python experiments/ap_compare.py rm=runs/reward_model-X/export loss=sigmoid beta=0.01

Reward model: `rm=PATH` (any HF …ForSequenceClassification dir), else one trained here with
experiments/reward_model.py's code path (`rm_steps` updates) into <run>/reward_model — a resumed
run reuses it. `judge=sim:NAME` scores by similarity to the held-out pair's chosen answer instead
(no reward model: a cheaper, weaker judge). `pairs_from=policy` replaces the dataset's pairs by
self-play's (experiments/ap_selfplay.py's step 1–2): `n` answers of the initial policy per pool
prompt (T 0.8, top-p 0.95), scored by the judge, the best / worst as the pair, m_ex their score
gap (saved in pool_samples.jsonl); `labeller=rm:PATH|sim:NAME` scores them instead of the judge
(sim: against the pool pair's chosen answer). Random selection is a distribution, not one subset:
`random_runs` (3) random subsets are trained, and each selector's row gives its paired difference
from their mean reward on the same prompts (± s.e.) and how many of them it beats.
Offline default: the bundled preference pairs' train split (174 pairs; explicit margin `auto` =
embedding cosine to the prompt, they ship no scores), top 0.2 → 35 pairs per selector, 8 SimPO
updates of 4 pairs (≈ one epoch of a subset), β 10, γ/β 0.5, lr 2e-5; 116 held-out prompts (the
28 eval-split pairs' and the 88 bundled confidence_qa held-out questions that no pool pair
answers), 48 new tokens. 11.8 min on 2 cores (nothing else running): seven trainings (three of
them random draws) and 116 prompts answered eight times, each time in one sampler call
(docs/methods.md). An answer training left unchanged keeps the initial reward (a tie).
Paper scale (SimPO on Llama-3-8B-Instruct, UltraFeedback prompts with their GPT-4 scores):
    python experiments/ap_compare.py model=meta-llama/Meta-Llama-3-8B-Instruct \
      data=<ultrafeedback_binarized train_prefs> eval_data=<test_prefs> explicit=dataset \
      rm=<RM dir> loss=simpo beta=10 gamma=5 lr=1e-6 warmup_steps=<10%> batch_size=128 \
      steps=<one epoch of the subset> top=0.4 max_prompt_len=1024 max_completion_len=1024 \
      eval_extra=none eval_max_new_tokens=1024 pool=none mesh=-1,8,1

Outputs in runs/ap_compare-<timestamp>/ (or out_dir=; re-using it resumes, a finished selector is
not retrained): config.json, subsets.json, initial.json (initial answers + rewards), reward_model/,
<selector>/ (the preference run: metrics.jsonl, curves.png, eval_before/after.json, summary.md;
heldout.json = answers + rewards; its checkpoints are removed once finished), summary.md and
compare.png (the table and its plot).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

import jax  # noqa: E402
import numpy as np  # noqa: E402

from align_jax.algorithms import ap_experiments as apx, ap_margins  # noqa: E402
from align_jax.algorithms.preference import TrainConfig, load_policy  # noqa: E402
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import selection  # noqa: E402
from align_jax.errors import ConfigError  # noqa: E402
from align_jax.experiment import PreferenceExperiment, mesh_of, open_run, train_policy  # noqa: E402
from align_jax.losses import PrefConfig, loss_spec  # noqa: E402
from align_jax.sampling import SamplingConfig  # noqa: E402
from align_jax.train import report  # noqa: E402
from align_jax.train.loop import eval_once  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config(PreferenceExperiment):
    SHORT_GROUPS = ("train", "objective", "sampling")  # n=, temperature=, top_p= are short keys
    objective: PrefConfig = PrefConfig(loss="simpo", beta=10.0, gamma=5.0)  # γ/β = 0.5
    # the budget every selector gets: 8 updates of 4 pairs ≈ one epoch of a 35-pair subset
    train: TrainConfig = TrainConfig(steps=8, batch_size=4, save_every=50,
                                     optim=OptimConfig(lr=2e-5, schedule="cosine"))
    max_examples: int | None = None  # the subset is the training set (its size: `top`)
    # pad to a multiple of 8, not 32: the bundled pairs' longest (70 tokens) runs as 72, not 96 —
    # a quarter less compute in every step on CPU (on TPU / GPU set 32 or more: tile sizes)
    pad_multiple: int = 8
    selectors: tuple[str, ...] = selection.SELECTORS  # each trains one policy on its subset
    random_runs: int = 3  # random subsets drawn (seeds seed, seed+1, …): random's spread
    top: float = 0.2  # fraction of the pool each selector keeps
    w: float = 1.0  # weight of z(m_im) in M_AP
    explicit: str = "auto"  # auto | dataset | rm:PATH | sim:NAME (experiments/ap_select.py)
    reference_field: str = "auto"  # sim: explicit margin: record field scored against (ap_select)
    pool: int | None = None  # training pairs scored and selected from (None = all)
    # data: the dataset's pairs | policy: self-play's pairs — `sampling.n` answers of the initial
    # policy per pool prompt, scored by the judge, best / worst as the pair (m_ex = their gap)
    pairs_from: str = "data"
    # pairs_from=policy: answers per prompt, as ap_selfplay samples them (T 0.8, top-p 0.95)
    sampling: SamplingConfig = SamplingConfig(n=4, temperature=0.8, top_p=0.95, max_new_tokens=48)
    # pairs_from=policy: who scores the pool's answers — judge (the held-out judge below) |
    # rm:PATH | sim:NAME (similarity to the pool pair's chosen answer). A labeller apart from the
    # judge keeps `explicit` from being selected by the very scores it is then judged by.
    labeller: str = "judge"
    rm: str | None = None  # reward model dir; None = train one into <run>/reward_model
    judge: str = "rm"  # rm (the reward model above) | sim:NAME (similarity to the held-out chosen)
    rm_steps: int = 16  # its updates (experiments/reward_model.py's default)
    eval_prompts: int | None = None  # held-out pairs' prompts answered and scored (None = all)
    # more held-out prompts (a bundled name or a JSONL of prompt/question [+ answer]; none):
    # auto = the bundled confidence_qa held-out questions the pool does not answer (default data)
    eval_extra: str | None = "auto"
    eval_max_new_tokens: int = 48  # greedy answers
    keep_checkpoints: bool = False  # keep a finished selector's checkpoints (they are large)


def reward_model_dir(cfg: Config, run_dir: Path) -> str:
    """``rm=`` or the export of a reward model trained once in the run dir (reused on resume)."""
    if cfg.rm:
        return cfg.rm
    out = run_dir / "reward_model"
    if not (out / "export" / "config.json").is_file():
        spec = importlib.util.spec_from_file_location(
            "_rm_exp", Path(__file__).with_name("reward_model.py"))
        mod = sys.modules["_rm_exp"] = importlib.util.module_from_spec(spec)  # for dataclasses
        spec.loader.exec_module(mod)
        mod.main([f"out_dir={out}", f"steps={cfg.rm_steps}", f"mesh={cfg.mesh}", "export=true",
                  f"pad_multiple={cfg.pad_multiple}",
                  *([f"model={cfg.model}"] if cfg.model else []), f"dtype={cfg.dtype}"])
    return str(out / "export")


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    for name in cfg.objective.loss_names:  # a pairwise loss (KTO / listwise need other data)
        loss_spec(name, "pair")
    apx.selector_subsets([0.0], [0.0], cfg.selectors, cfg.top,  # checked before loading
                         random_runs=cfg.random_runs)
    if cfg.pairs_from not in ("data", "policy"):
        raise ConfigError(f"pairs_from={cfg.pairs_from!r}: expected data or policy")
    if cfg.pairs_from == "policy" and (cfg.explicit, cfg.reference_field) != ("auto", "auto"):
        # the judge's score gap is the explicit margin there: a set one would be ignored
        raise ConfigError(f"explicit={cfg.explicit!r} / reference_field={cfg.reference_field!r} "
                          "do not apply with pairs_from=policy (m_ex is the judge's score gap)")
    if cfg.labeller != "judge" and (cfg.pairs_from != "policy"
                                    or not apx.is_scorer_spec(cfg.labeller)):
        raise ConfigError(f"labeller={cfg.labeller!r}: expected judge, rm:PATH or sim:NAME, and "
                          "only with pairs_from=policy (it scores the policy's pool answers)")
    if cfg.labeller != "judge":  # a sim: name typo fails now, not after the RM trains
        apx.check_scorer_spec(cfg.labeller, "labeller")
    if cfg.judge != "rm":
        apx.check_scorer_spec(cfg.judge, "judge")
    # 1. the pool and the held-out prompts — read before the run dir exists: a missing or bad
    # file fails with its one-line error and leaves no half-made run behind
    pairs, records, prompts, held = apx.pool_and_held_out(cfg.data, cfg.data_format, cfg.eval_data,
                                                          cfg.pool, cfg.eval_prompts)
    extra = cfg.eval_extra if cfg.eval_extra != "auto" else (None if cfg.data else "confidence_qa")
    x_prompts, x_refs = apx.extra_held_out(extra, pairs, prompts)
    refs = [h.chosen for h in held][: len(prompts)] + x_refs  # what a sim: judge compares with
    prompts = prompts + x_prompts
    mesh = mesh_of(cfg)
    run_dir = open_run("ap_compare", cfg)
    apx.share_compiles(run_dir)  # every selector's training compiles the same programs

    # 2. the pool's two margins (implicit: the initial policy, cached) and the subsets
    rm_path = reward_model_dir(cfg, run_dir) if cfg.judge == "rm" else None
    judge = apx.make_response_scorer(f"rm:{rm_path}" if rm_path else cfg.judge, mesh=mesh)
    key = jax.random.PRNGKey(cfg.train.seed)
    policy, tok = load_policy(cfg.model, dtype=cfg.dtype, mesh=mesh)
    if cfg.pairs_from == "policy":  # the labeller scores the initial policy's own answers
        own = cfg.labeller == "judge"
        label = judge if own else apx.make_response_scorer(cfg.labeller, mesh=mesh)
        _, pairs, m_ex = apx.on_policy_pairs(policy, tok, apx.prompt_pool(pairs),
                                             jax.random.fold_in(key, 1),
                                             cfg.sampling, label, run_dir / "pool_samples.jsonl",
                                             mesh=mesh)
        explicit = (f"judge's score gap ({rm_path or cfg.judge})" if own
                    else f"labeller's score gap ({cfg.labeller})")
    else:
        explicit = ap_margins.resolve_explicit(cfg.explicit, records)
        m_ex = ap_margins.explicit_margins(explicit, pairs, records,
                                           reference_field=cfg.reference_field, mesh=mesh)
    res = ap_margins.implicit_margins(policy, tok, pairs, cfg.tokenize_config(),
                                      batch_size=cfg.ref_batch_size, mesh=mesh,
                                      chunk_size=cfg.chunk_size, cache_dir=cfg.cache_dir)
    m_im = res.arrays["margin_implicit"].astype(np.float64)
    subsets = apx.selector_subsets(m_ex, m_im, cfg.selectors, cfg.top, w=cfg.w, seed=cfg.train.seed,
                                   random_runs=cfg.random_runs)
    # "explicit_margin", not "explicit": that is also a selector's name (it overwrote the source)
    report.write_json(run_dir / "subsets.json", {"pool": len(pairs), "explicit_margin": explicit,
                                                 **{s: idx.tolist() for s, idx in subsets.items()}})
    print(f"[align_jax] {len(pairs)} pairs in the pool, {len(next(iter(subsets.values())))} per "
          f"selector; {len(prompts)} held-out prompts")

    # 3. held-out answers of a policy (greedy), scored by the reward model
    sampling = SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens, greedy=True)

    def held_out(model, initial: dict | None = None) -> dict:
        answers = apx.sample_answers(model, tok, prompts, key, sampling, mesh=mesh)
        # an answer training left unchanged keeps the initial reward: a tie, not float noise
        rewards = apx.score_vs_initial(judge, prompts, answers, refs, initial)
        return {"prompts": prompts, "answers": answers, "rewards": rewards.tolist()}

    initial = eval_once(run_dir / "initial.json", lambda: held_out(policy))
    del policy

    # 4. one preference run per selector on its subset (resumable; a finished one is skipped)
    results = {}
    for sel, idx in subsets.items():
        sub = run_dir / sel
        if not (sub / "heldout.json").is_file():
            model, _ = load_policy(cfg.model, dtype=cfg.dtype, mesh=mesh, lora_rank=cfg.lora_rank,
                                   lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                                   remat=cfg.remat)
            sub.mkdir(exist_ok=True)
            print(f"[align_jax] selector {sel}: training on {len(idx)} pairs")
            out = train_policy(f"ap_compare/{sel}", cfg, cfg.objective, "pair", model, tok,
                               [pairs[i] for i in idx], held[: cfg.eval_examples or None], sub,
                               mesh=mesh)
            eval_once(sub / "heldout.json", lambda: held_out(out["policy"], initial))
            if not cfg.keep_checkpoints:
                shutil.rmtree(sub / "checkpoints", ignore_errors=True)
        results[sel] = json.loads((sub / "heldout.json").read_text())["rewards"]

    # 5. the table and the plot
    rows = apx.compare_rows(initial["rewards"], results, {s: len(i) for s, i in subsets.items()})
    table = apx.compare_table(rows)
    (run_dir / "summary.md").write_text(
        f"# ap_compare: {cfg.objective.loss} on {len(next(iter(subsets.values())))} of "
        f"{len(pairs)} pairs per selector, {len(prompts)} held-out prompts scored by "
        f"{rm_path or cfg.judge}\n\n"
        + table)
    apx.plot_compare(rows, run_dir / "compare.png", title=f"ap_compare ({cfg.objective.loss})")
    report.write_json(run_dir / "results.json", rows)
    print(table)
    print(f"[align_jax] done: {run_dir}")
    return {"rows": rows, "run_dir": str(run_dir)}


if __name__ == "__main__":
    run_main(main)
