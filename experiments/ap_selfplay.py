"""python experiments/ap_selfplay.py [rounds=2] [scorer=sim:NAME|rm:PATH] [evolve=true] [key=value ...]

Evolve-then-select self-play (arXiv 2503.01864, ALGORITHMS.md §4). Each round:
  1. sample `n` answers per prompt from the current policy (T 0.8, top-p 0.95);
  2. score them — `scorer=rm:PATH` (a reward model of prompt + answer) or `sim:NAME` (a registered
     similarity scorer against the prompt's reference; an evolved prompt has none and is scored
     against its own text, a relevance proxy) — and take the best / worst answer as the pair
     (m_ex = their score gap; a prompt whose answers all tie gives no pair);
  3. select the top `top` of the pairs by M_AP = z(m_ex) − w·z(m_im), w 2.5, m_im the current
     policy's implicit margin (z over the round's pairs);
  4. train on them with the preference step of experiments/dpo.py (SimPO by default, β 10, γ/β .5;
     `loss=` any registered pairwise loss) — the next round starts from the result;
  5. with `evolve`, ask the policy to rewrite the prompts of the `evolve_top` best pairs into new
     prompts, which join the next round (topped up with unused pool prompts to `prompts_per_round`).

    python experiments/ap_selfplay.py                                # bundled prompts, SmolLM2
    python experiments/ap_selfplay.py rounds=3 scorer=rm:runs/reward_model-X/export n=5

Prompt pool: the bundled preference pairs' train split (their chosen answer as the reference),
or `data=` pairs / prompt+reference records. Offline default: 2 rounds of 12 prompts × 4 answers
of ≤ 32 tokens, embedding-cosine scorer (bundled MiniLM), 4 SimPO updates of 2 pairs per round,
evolve the top 4 prompts (every round, so a resume with more rounds continues); not timed on a
quiet machine yet (estimate ≈ 10 min on 2 cores: docs/methods.md).

Outputs in runs/ap_selfplay-<timestamp>/ (or out_dir=; re-using it resumes, a finished round is
not redone): config.json, rounds/r<k>/ (prompts.jsonl, samples.jsonl: answers + scores,
pairs.jsonl: every pair with margin_explicit / margin_implicit / alignment_potential,
selected.jsonl, train/: the preference run (metrics.jsonl, curves.png, eval_before/after.json,
summary.md), evolved.jsonl, round.json: the round's metrics), rounds.md (one row per round),
policy/ (the LATEST round's only: HF safetensors, what the next round and a resume load).
"""
from __future__ import annotations

import dataclasses
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
from align_jax.data import PreferencePair, selection  # noqa: E402
from align_jax.experiment import PreferenceExperiment, load_splits, mesh_of  # noqa: E402
from align_jax.experiment import open_run, train_policy  # noqa: E402
from align_jax.losses import PrefConfig, loss_spec  # noqa: E402
from align_jax.models import export_hf  # noqa: E402
from align_jax.sampling import SamplingConfig  # noqa: E402
from align_jax.train import report  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config(PreferenceExperiment):
    SHORT_GROUPS = ("train", "objective", "sampling")  # n=, temperature=, top_p= are short keys
    objective: PrefConfig = PrefConfig(loss="simpo", beta=10.0, gamma=5.0)  # γ/β = 0.5
    # per round: 4 updates of 2 pairs from the previous round's policy
    train: TrainConfig = TrainConfig(steps=4, batch_size=2, save_every=50,
                                     optim=OptimConfig(lr=1e-5, schedule="cosine"))
    # n answers per prompt (the paper: 5 at T 0.8, top-p 0.95); also the evolve rewrites
    sampling: SamplingConfig = SamplingConfig(n=4, temperature=0.8, top_p=0.95, max_new_tokens=32)
    max_examples: int | None = None  # every selected pair of a round is trained on
    rounds: int = 2  # sample → score → select → train (→ evolve) rounds
    prompts_per_round: int = 12  # evolved prompts of the last round first, then unused pool ones
    scorer: str = "sim:embedding_cosine"  # rm:PATH | sim:NAME (vs the prompt's reference)
    top: float = 0.5  # fraction of the round's pairs kept by M_AP
    w: float = 2.5  # weight of z(m_im) (the paper's self-play value)
    evolve: bool = True  # rewrite the top prompts into new ones for the next round
    evolve_top: int = 4  # prompts of the best pairs (by M_AP) the policy rewrites


def main(argv: list[str]) -> dict:
    cfg = parse_overrides(Config(), argv)
    for name in cfg.objective.loss_names:
        loss_spec(name, "pair")
    mesh = mesh_of(cfg)
    # data and scorer before the run dir: a missing file or a bad scorer= leaves no run behind
    pool = apx.prompt_pool(load_splits("preference", cfg.data, cfg.data_format)[0])
    held = [e for e in load_splits("preference", cfg.data, cfg.data_format, cfg.eval_data)[1]
            if isinstance(e, PreferencePair)][: cfg.eval_examples or None]  # held-out loss
    score = apx.make_response_scorer(cfg.scorer, mesh=mesh)
    run_dir = open_run("ap_selfplay", cfg)
    apx.share_compiles(run_dir)  # every round compiles the same programs
    rows = []
    for k in range(cfg.rounds):
        rdir = run_dir / "rounds" / f"r{k}"
        if (rdir / "round.json").is_file():  # a finished round is not redone
            rows.append(json.loads((rdir / "round.json").read_text()))
            continue
        rdir.mkdir(parents=True, exist_ok=True)
        prev = run_dir / "rounds" / f"r{k - 1}" / "policy"  # the previous round's result
        model, tok = load_policy(str(prev) if k else cfg.model, dtype=cfg.dtype, mesh=mesh,
                                 lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                 lora_targets=cfg.lora_targets, remat=cfg.remat)
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), k)
        prompts = apx.round_prompts(pool, rdir, k, cfg.prompts_per_round)

        # 1–2. sample n answers per prompt, score them, best / worst as the pair
        samples, pairs, m_ex = apx.on_policy_pairs(model, tok, prompts, key, cfg.sampling, score,
                                                   rdir / "samples.jsonl", mesh=mesh)
        if not pairs:
            raise SystemExit(f"round {k}: every prompt's {cfg.sampling.n} answers scored the "
                             "same; no pair to train on (raise n or temperature)")

        # 3. M_AP over the round's pairs; the implicit margin of the policy about to be trained
        res = ap_margins.implicit_margins(model, tok, pairs, cfg.tokenize_config(),
                                          batch_size=cfg.ref_batch_size, mesh=mesh,
                                          chunk_size=cfg.chunk_size, cache_dir=str(rdir),
                                          progress=False)
        m_im = res.arrays["margin_implicit"].astype(np.float64)
        m_ap = selection.alignment_potential(m_ex, m_im, cfg.w)
        idx = selection.select_top(m_ap, cfg.top)
        if len(idx) < cfg.train.batch_size <= len(pairs):  # at least one full batch to train on
            idx = selection.select_top(m_ap, cfg.train.batch_size / len(pairs))
        scored = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                  for p in pairs]
        apx.write_jsonl(rdir / "pairs.jsonl", [
            {**r, "margin_explicit": float(a), "margin_implicit": float(b),
             "alignment_potential": float(c)} for r, a, b, c in zip(scored, m_ex, m_im, m_ap)])
        apx.write_jsonl(rdir / "selected.jsonl", [
            {**scored[i], "alignment_potential": float(m_ap[i])} for i in map(int, idx)])

        # 4. train on the selected pairs (the next round starts from the result)
        (rdir / "train").mkdir(exist_ok=True)
        out = train_policy(f"ap_selfplay/r{k}", cfg, cfg.objective, "pair", model, tok,
                           [pairs[i] for i in idx], held, rdir / "train", mesh=mesh)
        policy = out["policy"]

        # 5. evolve: the policy rewrites the prompts of the best pairs into new ones
        evolved = []
        if cfg.evolve:  # also in the last round: a resume with more rounds continues from it
            top_prompts = [pairs[i].prompt for i in idx[: cfg.evolve_top]]
            new = apx.evolve_prompts(policy, tok, top_prompts, jax.random.fold_in(key, 1),
                                     cfg.sampling, mesh=mesh)
            evolved = [{"prompt": p, "reference": None, "evolved_from_round": k} for p in new]
            apx.write_jsonl(rdir / "evolved.jsonl", evolved)
        tmp = rdir / "policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export_hf(policy, tok, tmp)
        shutil.rmtree(rdir / "policy", ignore_errors=True)  # a crash after the rename, re-done
        tmp.rename(rdir / "policy")
        all_scores = np.array([x for r in samples for x in r["scores"]])
        row = {"round": k, "prompts": len(samples), "mean_score": float(all_scores.mean()),
               "best_of_n": float(np.mean([max(r["scores"]) for r in samples])),
               "pairs": len(pairs), "selected": len(idx), "evolved": len(evolved),
               "heldout_loss_before": out["before"].get("loss"),
               "heldout_loss_after": out["after"].get("loss")}
        report.write_json(rdir / "round.json", row)  # the round is done: its policy is complete
        shutil.rmtree(rdir / "train" / "checkpoints", ignore_errors=True)
        if k:  # only the latest round's policy is kept (the next round and a resume load it)
            shutil.rmtree(prev, ignore_errors=True)
        rows.append(row)
        print(f"[align_jax] round {k}: " + ", ".join(f"{a}={b}" for a, b in row.items()))
    table = apx.rows_table(rows)
    (run_dir / "rounds.md").write_text(f"# ap_selfplay: {len(rows)} rounds, {cfg.scorer}\n\n"
                                       + table)
    print(table)
    print(f"[align_jax] done: {run_dir}")
    return {"rounds": rows, "run_dir": str(run_dir)}


if __name__ == "__main__":
    run_main(main)
