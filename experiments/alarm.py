"""python experiments/alarm.py [ablation=hierarchical|holistic_only|aspect_only|weighted_sum]
[preset=long_form_qa|mt] [rm=<HF reward-model dir>] [key=value ...]

ALaRM (arXiv 2403.06754): a holistic reward (a reward model, z-normalised with statistics
measured ONCE on the initial policy's samples) gates dense aspect rewards: a sample with
h < τ gets w_h·h on its last token only; one with h ≥ τ gets the σ-shaped aspect rewards plus
w_h·h; ≤ 2-token responses get −10·w_h. The aspect(s) are chosen by consistency selection — the
candidate whose pairwise preferences agree most with the holistic reward's on a sample set. The
token rewards become reward-to-go returns (γ) and train the policy with PPO-clip, several epochs
per batch of samples, in the one online loop. `ablation=` swaps the combiner for the paper's
baselines; `preset=mt` uses τ 0.5, w_h 3 instead of long-form QA's τ 0.6, w_h 5.

Offline default: SmolLM2-135M-Instruct with LoRA, the bundled preference set's open-ended
("general") prompts with their `chosen` answers as references (40 train / 10 held out), and as
the holistic reward a Bradley–Terry reward model trained on the fly by experiments/reward_model.py
(SmolLM2-135M on the bundled pairs, saved in <run>/reward_model; `rm=` gives one instead);
candidate aspects readability (−Flesch–Kincaid), length (words), repetition (distinct-2) and
BERTScore to the reference (MiniLM). 12 min on 2 quiet CPU cores of an AVX-512 host, 22 min
on an AVX2 one (both measured; README), most of it the 30 PPO steps; `steps=15` halves those.
Outputs in runs/alarm_<ablation>-<time>/ (or out_dir=; re-using it resumes): config.json,
reward_model/ (the trained RM and its export), holistic_stats.json, alarm_selection.json (every
candidate's agreement rate), metrics.jsonl, checkpoints/, curves.png, eval_before/after.json,
samples.md, summary.md. Formulas and choices: docs/methods.md, "ALaRM".
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_jax import experiment as ex  # noqa: E402
from align_jax.algorithms import alarm  # noqa: E402
from align_jax.algorithms.online_loop import OnlineLoopConfig  # noqa: E402
from align_jax.algorithms.refalign import RefAlignConfig  # noqa: E402
from align_jax.algorithms.token_objective import TokenPGObjective  # noqa: E402
from align_jax.cli import parse_overrides, run_main  # noqa: E402
from align_jax.data import prompt_text  # noqa: E402
from align_jax.losses.token_pg import AdvantageConfig, TokenPGConfig  # noqa: E402
from align_jax.models import load_causal_lm  # noqa: E402
from align_jax.rewards import compose, load_reward_model  # noqa: E402
from align_jax.rewards.alarm import preset  # noqa: E402
from align_jax.sampling.sampler import SamplingConfig  # noqa: E402
from align_jax.sanity import check_config  # noqa: E402
from align_jax.train import report  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Config(ex.OnlineExperiment):
    SHORT_GROUPS = ("objective", "sampling", "optim", "loop", "pg", "adv")
    ablation: str = "hierarchical"  # the combiner: hierarchical | holistic_only | aspect_only | weighted_sum
    preset: str = "long_form_qa"  # long_form_qa (τ 0.6, w_h 5) | mt (τ 0.5, w_h 3)
    rm: str | None = None  # holistic reward model (HF …ForSequenceClassification dir); None = train one
    rm_steps: int = 16  # updates of the on-the-fly reward model (experiments/reward_model.py)
    aspects: tuple[str, ...] = alarm.CANDIDATES  # candidates of the consistency selection
    top_n: int = 1  # aspects kept by the selection
    aspect_weight: float = 1.0  # w_a of each selected (σ-shaped) aspect
    select_prompts: int = 16  # training prompts of the sample set (stats + selection)
    select_k: int = 4  # samples per sample-set prompt
    topics: tuple[str, ...] = ("general",)  # bundled prompts kept (the open-ended ones); () = all
    eval_samples: int = 4  # held-out samples per prompt (fixed key)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    # K samples per prompt; updates_per_rollout = PPO epochs over each batch of samples
    objective: RefAlignConfig = RefAlignConfig(k=4, updates_per_rollout=2)
    pg_loss: str = "ppo"  # a registered token_pg loss (ppo | grpo | dapo | bnpo | dr_grpo | gspo)
    pg: TokenPGConfig = TokenPGConfig(epsilon=0.2)
    adv: AdvantageConfig = AdvantageConfig(gamma=1.0, whiten=True)
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=48, temperature=1.0, prompt_bucket=16)
    optim: OptimConfig = OptimConfig(lr=2e-4, grad_clip=1.0)
    loop: OnlineLoopConfig = OnlineLoopConfig(steps=30, prompts_per_step=4, save_every=10,
                                              kl_every=5)
    eval_prompts: int = 10


def reward_model_dir(cfg: Config, run_dir: Path) -> str:
    """``rm=``, else a reward model trained by experiments/reward_model.py into the run dir
    (once: a resumed run finds its export; a run killed while training it resumes that run)."""
    if cfg.rm is not None:
        return cfg.rm
    rm_run = run_dir / "reward_model"
    if not (rm_run / "export" / "tokenizer_config.json").is_file():
        spec = importlib.util.spec_from_file_location("_rm_experiment", EXPERIMENTS / "reward_model.py")
        rm_exp = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(rm_exp)
        rm_exp.main([f"out_dir={rm_run}", f"steps={cfg.rm_steps}", f"mesh={cfg.mesh}"]
                    + ([f"model={cfg.model}"] if cfg.model else []))
        # finished and exported: its checkpoints (weights + Adam moments, 1.2 GB for the
        # full-FT default) would only resume a run that is over
        shutil.rmtree(rm_run / "checkpoints", ignore_errors=True)
    return str(rm_run / "export")


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    check_config(cfg)
    base = preset(cfg.preset, mode=cfg.ablation)  # an unknown name fails here, listing the valid
    mesh = ex.mesh_of(cfg)
    run_dir = ex.open_run(f"alarm_{cfg.ablation}", cfg)

    # 1. holistic reward: a Bradley–Terry reward model (trained here unless rm= is given)
    holistic = load_reward_model(reward_model_dir(cfg, run_dir), dtype=cfg.dtype, mesh=mesh,
                                 progress=False)

    # 2. policy (LoRA) and data: open-ended prompts, the `chosen` answer as the reference
    policy, tok = load_causal_lm(cfg.model, dtype=cfg.dtype, mesh=mesh, lora_rank=cfg.lora_rank,
                                 lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)
    train, evals = ex.load_splits("preference", cfg.data, cfg.data_format,
                                  skip_bad_records=cfg.skip_bad_records, to_record=with_reference)
    keep = lambda rs: [r for r in rs if not cfg.topics or r.get("topic") in cfg.topics]  # noqa: E731
    train, evals = keep(train), keep(evals)[: cfg.eval_prompts]
    print(f"[align_jax] {len(train)} training prompts, {len(evals)} held-out prompts")

    # 3. aspects and the fixed holistic stats, measured once on the initial policy's samples
    similarity = (compose.similarity_scorer(cfg.similarity, tok, cfg.encoder, None, mesh)
                  if "similarity" in cfg.aspects else None)
    candidates = alarm.aspect_scorers(cfg.aspects, tok, train + evals, similarity)
    stats, selection = alarm.measure_once(
        run_dir, policy, tok, train[: cfg.select_prompts], holistic, candidates, cfg.sampling,
        cfg.select_k, cfg.loop.seed, cfg.top_n, mesh)
    chosen = selection["selected"]
    print(f"[align_jax] consistency selection -> {chosen}\n{alarm.selection_table(selection)}")

    # 4. the hierarchical token rewards → reward-to-go → PPO-clip in the one online loop
    acfg = alarm.alarm_config(base, selection, cfg.aspect_weight)
    objective = TokenPGObjective(
        alarm.token_reward_hook(stats, chosen, acfg), loss=cfg.pg_loss,
        pg=dataclasses.replace(cfg.pg, beta=cfg.objective.kl_coef), adv=cfg.adv,
        chunk_size=cfg.objective.chunk_size)
    reward_fn = alarm.reward_fn(holistic, {n: candidates[n] for n in chosen})

    def held_out(model):
        return alarm.evaluate(model, tok, evals, holistic, stats, candidates, cfg.sampling,
                              cfg.eval_samples, cfg.loop.seed, acfg.tau, mesh)

    before, policy, after = ex.train_between_evals(
        cfg, run_dir, policy, tok, train, reward_fn, held_out, mesh=mesh,
        label=f"alarm_{cfg.ablation}", objective=objective)

    # 5. artefacts: held-out holistic reward and every aspect before / after
    out = ex.finish(run_dir, f"ALaRM ({cfg.ablation}, {cfg.preset})", before, after,
                    [prompt_text(r["prompt"]) for r in evals], policy=policy, tokenizer=tok,
                    export=cfg.export)
    (run_dir / "summary.md").write_text(
        f"# ALaRM ({cfg.ablation}, {cfg.preset}): held-out, {cfg.eval_samples} samples per "
        f"prompt\n\n{report.summary_table(before['metrics'], after['metrics'])}\n"
        f"{alarm.selection_table(selection)}")
    return {**out, "selection": selection}


def with_reference(e) -> dict:
    """{prompt, reference, ...}: a pair's `chosen` answer serves as the reference."""
    r = ex.as_record(e)
    return r if "reference" in r or "chosen" not in r else {**r, "reference": r["chosen"]}


if __name__ == "__main__":
    run_main(main)
