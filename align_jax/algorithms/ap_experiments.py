"""What the two alignment-potential experiments build on (arXiv 2503.01864, ALGORITHMS.md §4):
``experiments/ap_compare.py`` (does selection help? the same training on each selector's subset,
scored by a reward model against the initial policy) and ``experiments/ap_selfplay.py`` (evolve
then select: sample, score, best/worst pairs, select by M_AP, train, rewrite the top prompts).

Pure numpy except the sampling helpers, which run the jitted sampler of ``align_jax.sampling``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from align_jax.data import selection
from align_jax.data.schemas import PreferencePair, RankedList
from align_jax.errors import ConfigError

def share_compiles(run_dir: Path) -> None:
    """XLA's persistent compilation cache in ``<run_dir>/xla_cache`` (unless the user set
    ``JAX_COMPILATION_CACHE_DIR``): the per-selector / per-round trainings build new jitted
    functions of the SAME programs, which would otherwise each compile again (~40 s on CPU)."""
    import os

    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(Path(run_dir) / "xla_cache"))


# ----------------------------------------------------------------------------- ap_compare


def selector_subsets(m_ex, m_im, selectors: Sequence[str], top: float, *, w: float = 1.0,
                     seed: int = 0, random_runs: int = 1) -> dict[str, np.ndarray]:
    """Dataset indices each selector keeps, best first. Every subset has the same size
    (``selection.num_selected(N, top)``): the comparison varies WHICH pairs, never how many.
    With ``random`` among the selectors, ``random_runs`` > 1 adds ``random_s1`` … (draws with
    seeds ``seed + k``): random selection is a distribution, and a selector beats it only if
    it beats most of its draws, not one lucky or unlucky subset."""
    for s in selectors:
        if s not in selection.SELECTORS:
            raise ConfigError(f"selectors: unknown selector {s!r}; expected names from "
                              f"{list(selection.SELECTORS)}")
    if random_runs < 1:
        raise ConfigError(f"random_runs={random_runs}: expected at least 1")
    out = {s: selection.select_top(selection.selector_scores(s, m_ex, m_im, w=w, seed=seed), top)
           for s in selectors}
    for k in range(1, random_runs if "random" in selectors else 1):
        out[f"random_s{k}"] = selection.select_top(
            selection.selector_scores("random", m_ex, m_im, seed=seed + k), top)
    return out


def is_random_run(name: str) -> bool:
    return name == "random" or name.startswith("random_s")


def pool_and_held_out(data: str | None, data_format: str = "auto", eval_data: str | None = None,
                      pool: int | None = None, eval_prompts: int | None = None):
    """(pool pairs, their raw records, held-out prompts, held-out pairs): the bundled preference
    pairs' train / eval split, or ``data`` with ``eval_data`` (else its first 10 % held out);
    the first ``pool`` pairs and ``eval_prompts`` prompts (None = all)."""
    from align_jax.data import bundled_path, prompt_text
    from align_jax.experiment import held_out_split

    pairs, records = selection.load_pair_rows(data or bundled_path("preference"), data_format)
    if data is None:
        keep = [i for i, p in enumerate(pairs) if p.meta.get("split") != "eval"]
        held = [p for p in pairs if p.meta.get("split") == "eval"]
    elif eval_data:
        keep, held = list(range(len(pairs))), selection.load_pair_rows(eval_data, data_format)[0]
    else:
        keep, held_idx = held_out_split(range(len(pairs)))
        held = [pairs[i] for i in held_idx]
    keep = keep[: pool or None]
    prompts = [prompt_text(p.prompt) for p in held][: eval_prompts or None]
    return [pairs[i] for i in keep], [records[i] for i in keep], prompts, held


def extra_held_out(spec: str | None, pool: Sequence[PreferencePair], held_prompts: Sequence[str]
                   ) -> tuple[list[str], list[str]]:
    """(prompts, references) appended to the held-out prompts: ``spec`` is a bundled dataset's
    name or a JSONL file of records with ``prompt`` (or ``question``) and optionally ``answer``
    (or ``reference``) and ``split``. Kept: rows not in a ``train`` split whose prompt is neither
    in the pool nor already held out and whose answer appears (as a whole word) in no pool pair's
    chosen answer (the confidence variant's judge, ``rewards.confidence.is_correct``) — a held-out
    question the training pairs answer is not held out."""
    from align_jax.data import bundled_path, prompt_text
    from align_jax.data.bundled import BUNDLED_FORMATS
    from align_jax.data.readers import iter_jsonl
    from align_jax.errors import DataError
    from align_jax.rewards.confidence import is_correct

    if not spec:
        return [], []
    path = bundled_path(spec) if spec in BUNDLED_FORMATS else Path(spec)
    if not path.is_file():
        raise ConfigError(f"eval_extra={spec!r}: neither a bundled dataset "
                          f"({sorted(BUNDLED_FORMATS)}) nor a file")
    seen = {prompt_text(p.prompt) for p in pool} | set(held_prompts)
    prompts, refs = [], []
    for rec in iter_jsonl(path):
        d = rec.data if isinstance(rec.data, dict) else {}
        prompt, ans = d.get("prompt", d.get("question")), d.get("answer", d.get("reference"))
        if rec.error or not isinstance(prompt, str):
            raise DataError(rec.error or "expected an object with a string 'prompt' or 'question'",
                            source=rec.source, location=rec.location)
        ans = "" if ans is None else str(ans)  # a number (0 too) is an answer
        if (d.get("split") == "train" or prompt in seen
                or ans and any(is_correct(ans, p.chosen) for p in pool)):
            continue
        seen.add(prompt)
        prompts.append(prompt)
        refs.append(ans)
    return prompts, refs


def win_rate(after, before) -> float:
    """Fraction of prompts whose trained answer the reward model scores above the initial
    policy's answer to the same prompt; a tie counts one half (AlpacaEval's convention)."""
    a, b = np.asarray(after, np.float64), np.asarray(before, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"win rate needs two equal non-empty [N] arrays, got {a.shape}, {b.shape}")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def score_vs_initial(score, prompts: Sequence[str], answers: Sequence[str], refs: Sequence[str],
                     initial: dict | None = None) -> np.ndarray:
    """``score(prompts, answers, refs)`` [N], except that an answer identical to ``initial``'s
    answer to the same prompt takes ``initial``'s reward instead of a fresh one — a tie, exactly.
    A judge's float result for one text moves by ~1e-6 with the batch it is scored in, and the
    win rate would count that noise as a win or a loss for every prompt whose greedy answer
    training left unchanged (52 of 116 for one random subset). Only the changed answers are
    scored."""
    out = np.zeros(len(answers), np.float64)
    same = np.zeros(len(answers), bool)
    if initial:
        same[:] = [a == b for a, b in zip(answers, initial["answers"])]
        out[same] = np.asarray(initial["rewards"], np.float64)[same]
    new = np.flatnonzero(~same).tolist()
    if new:
        out[new] = np.asarray(score([prompts[i] for i in new], [answers[i] for i in new],
                                    [refs[i] for i in new]), np.float64)
    return out


def sem(x) -> float:
    """Standard error of the mean (0 for fewer than two values)."""
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def compare_rows(initial, rewards: dict[str, Sequence[float]], sizes: dict[str, int]) -> list[dict]:
    """One row per selector after a first row for the initial policy itself: mean held-out
    reward and its standard error, win rate vs the initial policy, pairs trained on, and, where
    random runs exist, the comparison with random selection — ``vs_random``: the mean over prompts
    of (this reward − the mean of the random runs' rewards on the same prompt), paired so the
    prompts' own spread cancels, with its standard error ``vs_random_sem``; ``random_beaten``:
    how many random runs have a lower mean (a random run is compared with the OTHER random runs)."""
    initial = np.asarray(initial, np.float64)
    no_random = {"vs_random": None, "vs_random_sem": None, "random_beaten": None}
    rows = [{"selector": "initial policy", "pairs": 0, "mean_reward": float(initial.mean()),
             "sem": sem(initial), "win_rate": None, **no_random}]
    rand = {n: np.asarray(r, np.float64) for n, r in rewards.items() if is_random_run(n)}
    for name, r in rewards.items():
        r = np.asarray(r, np.float64)
        row = {"selector": name, "pairs": int(sizes[name]), "mean_reward": float(r.mean()),
               "sem": sem(r), "win_rate": win_rate(r, initial), **no_random}
        others = [v for n, v in rand.items() if n != name]
        if others:
            diff = r - np.mean(others, axis=0)
            row.update(vs_random=float(diff.mean()), vs_random_sem=sem(diff),
                       random_beaten=f"{sum(r.mean() > v.mean() for v in others)}/{len(others)}")
        rows.append(row)
    return rows


def compare_table(rows: Sequence[dict]) -> str:
    lines = ["| selector | pairs | mean reward ± s.e. | win rate vs initial "
             "| Δ vs random (paired) ± s.e. | random runs beaten |", "|---|---|---|---|---|---|"]
    for r in rows:
        win = "—" if r["win_rate"] is None else f"{r['win_rate']:.3f}"
        vs = ("—" if r.get("vs_random") is None
              else f"{r['vs_random']:+.4f} ± {r['vs_random_sem']:.4f}")
        lines.append(f"| {r['selector']} | {r['pairs']} | {r['mean_reward']:.4f} ± {r['sem']:.4f} "
                     f"| {win} | {vs} | {r.get('random_beaten') or '—'} |")
    return "\n".join(lines) + "\n"


def plot_compare(rows: Sequence[dict], out_png: Path, title: str = "ap_compare") -> None:
    """Two bar panels: mean held-out reward (± s.e.; the initial policy's as a line) and win
    rate vs the initial policy (0.5 = no change as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    init, sel = rows[0], list(rows[1:])
    names = [r["selector"] for r in sel]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.bar(names, [r["mean_reward"] for r in sel], yerr=[r["sem"] for r in sel],
           color="tab:blue", capsize=3)
    a1.axhline(init["mean_reward"], color="tab:red", ls="--", label="initial policy")
    a1.set_title("mean held-out reward")
    a1.legend(fontsize=7)
    a2.bar(names, [r["win_rate"] for r in sel], color="tab:green")
    a2.axhline(0.5, color="0.4", ls="--")
    a2.set_ylim(0, 1)
    a2.set_title("win rate vs initial policy")
    for ax in (a1, a2):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- sampling / scoring


def sample_answers(policy, tokenizer, prompts: Sequence[str], key, sampling, *, mesh=None,
                   rows: int = 128) -> list[str]:
    """``sampling.n`` answers per prompt (prompt-major: prompt 0's n first), ``rows`` answers
    (``rows // n`` prompts) per sampler call, each call with its own fold of ``key``. Counted in
    rows, not prompts: 116 greedy held-out answers run as one call, not four of 32 — each decode
    step reads the weights once for all rows and the loop ends with the longest answer
    (ap_compare's held-out pass: 79 s → 54 s on 2 busy cores); n = 4 keeps 32 prompts a call."""
    import jax

    from align_jax.sampling import sample_texts

    batch = max(1, rows // max(1, sampling.n))
    out: list[str] = []
    for i, s in enumerate(range(0, len(prompts), batch)):
        texts, _ = sample_texts(policy, tokenizer, list(prompts[s:s + batch]),
                                jax.random.fold_in(key, i), sampling, mesh=mesh)
        out.extend(texts)
    return out


def is_scorer_spec(spec: str) -> bool:
    """``rm:PATH`` or ``sim:NAME`` with a non-empty PATH / NAME: what
    :func:`make_response_scorer` builds (checked before anything loads)."""
    kind, _, arg = spec.partition(":")
    return kind in ("rm", "sim") and bool(arg)


def check_scorer_spec(spec: str, key: str) -> None:
    """ConfigError unless :func:`make_response_scorer` can build ``spec``: ``rm:PATH``, or
    ``sim:NAME`` with NAME a registered similarity scorer — so that a typo fails before a reward
    model trains or a run dir is made."""
    from align_jax.rewards.registry import list_scorers

    if not is_scorer_spec(spec):
        raise ConfigError(f"{key}={spec!r}: expected rm:PATH or sim:NAME")
    kind, _, name = spec.partition(":")
    if kind == "sim" and name not in list_scorers("similarity"):
        raise ConfigError(f"{key}={spec!r}: unknown similarity scorer; registered: "
                          f"{list_scorers('similarity')}")


def make_response_scorer(spec: str, *, mesh=None) -> Callable[[list[str], list[str], list[str]],
                                                                np.ndarray]:
    """``score(prompts, responses, references) -> [N]`` from ``rm:PATH`` (a reward model of the
    prompt and response) or ``sim:NAME`` (a registered similarity scorer of the response against
    its reference)."""
    if not is_scorer_spec(spec):
        raise ConfigError(f"scorer={spec!r}: expected rm:PATH or sim:NAME (a registered "
                          "similarity scorer)")
    kind, _, arg = spec.partition(":")
    if kind == "rm":
        from align_jax.rewards.reward_model import load_reward_model

        rm = load_reward_model(arg, mesh=mesh, progress=False)
        return lambda prompts, responses, refs: np.asarray(rm(prompts, responses), np.float64)
    from align_jax.rewards.similarity import make_similarity

    sim = make_similarity(arg)
    return lambda prompts, responses, refs: np.asarray(sim(responses, refs), np.float64)


# ----------------------------------------------------------------------------- self-play


def best_worst_pairs(prompts: Sequence[str], answers: Sequence[str], scores, n: int
                     ) -> tuple[list[PreferencePair], np.ndarray, list[int]]:
    """Per prompt (its ``n`` consecutive answers): the top-scored answer as chosen, the
    bottom-scored as rejected (first occurrence on ties), m_ex = their score gap — a ranked list
    of ``n`` per prompt, paired by ``data.formats.ranked_to_pairs`` (a prompt whose answers all
    score the same, or whose best and worst texts are equal, gives no pair). Returns (pairs,
    m_ex [P'], kept prompt indices)."""
    from align_jax.data.formats import ranked_to_pairs

    scores = np.asarray(scores, np.float64).reshape(len(prompts), n)
    pairs = ranked_to_pairs([RankedList(p, list(answers[i * n:(i + 1) * n]), scores[i].tolist(),
                                        {"prompt_index": i}) for i, p in enumerate(prompts)])
    kept = [pair.meta["prompt_index"] for pair in pairs]
    return pairs, scores[kept].max(axis=1) - scores[kept].min(axis=1), kept


def on_policy_pairs(policy, tokenizer, rows: Sequence[dict], key, sampling, score, path: Path,
                    *, mesh=None) -> tuple[list[dict], list[PreferencePair], np.ndarray]:
    """Self-play's pairs: ``sampling.n`` answers of ``policy`` to each row's ``prompt``, scored
    by ``score(prompts, answers, refs)`` (a row's ``reference``, else its prompt: an evolved
    prompt has no reference), written to ``path`` (JSONL of prompt, answers, scores; when it
    exists it is read back — a resumed run does not resample), and each prompt's best / worst
    answer as its pair (:func:`best_worst_pairs`). Returns (samples, pairs, m_ex)."""
    n = sampling.n
    if not Path(path).is_file():
        texts = [r["prompt"] for r in rows]
        answers = sample_answers(policy, tokenizer, texts, key, sampling, mesh=mesh)
        refs = [r.get("reference") or r["prompt"] for r in rows for _ in range(n)]
        s = np.asarray(score([t for t in texts for _ in range(n)], answers, refs), np.float64)
        write_jsonl(path, [{"prompt": t, "answers": answers[i * n:(i + 1) * n],
                            "scores": s[i * n:(i + 1) * n].tolist()}
                           for i, t in enumerate(texts)])
    samples = read_jsonl(path)
    pairs, m_ex, _ = best_worst_pairs([r["prompt"] for r in samples],
                                      [a for r in samples for a in r["answers"]],
                                      [x for r in samples for x in r["scores"]], n)
    return samples, pairs, m_ex


def prompt_pool(examples) -> list[dict]:
    """[{prompt, reference}] of the self-play pool: one row per distinct prompt (first
    occurrence), a pair's chosen answer (or a record's reference) as the reference."""
    from align_jax.data.schemas import prompt_text

    rows: dict[str, str | None] = {}
    for e in examples:
        rows.setdefault(prompt_text(e.prompt), e.chosen if isinstance(e, PreferencePair)
                        else getattr(e, "reference", None))
    return [{"prompt": p, "reference": r} for p, r in rows.items()]


def round_prompts(pool: Sequence[dict], rdir: Path, k: int, size: int) -> list[dict]:
    """The prompts of round ``k`` (written to ``<rdir>/prompts.jsonl``, read back on resume):
    round 0 the first ``size`` of the pool; round k round k−1's evolved prompts, topped up with
    pool prompts no earlier round used (the rounds are ``rdir``'s siblings ``r<j>``)."""
    if (rdir / "prompts.jsonl").is_file():
        return read_jsonl(rdir / "prompts.jsonl")
    used, evolved = set(), []
    for j in range(k):
        prev = rdir.parent / f"r{j}"
        used |= {r["prompt"] for r in read_jsonl(prev / "prompts.jsonl")}
        if j == k - 1 and (prev / "evolved.jsonl").is_file():
            evolved = read_jsonl(prev / "evolved.jsonl")
    rows = (evolved + [r for r in pool if r["prompt"] not in used])[:size]
    write_jsonl(rdir / "prompts.jsonl", rows)
    return rows


def rows_table(rows: Sequence[dict]) -> str:
    """Markdown table of dict rows (the keys of the first; floats to 4 decimals)."""
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
            + "".join("| " + " | ".join(fmt(r[c]) for c in keys) + " |\n" for r in rows))


EVOLVE_INSTRUCTION = ("Rewrite the following instruction into a new, different instruction on a "
                      "related topic and of similar difficulty. Reply with the new instruction "
                      "only.\n\nInstruction: {prompt}")


def clean_prompt(text: str, max_chars: int = 400) -> str:
    """First non-empty line of a rewrite, without a leading 'Instruction:' label or quotes."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    for label in ("New instruction:", "Instruction:"):
        if line.lower().startswith(label.lower()):
            line = line[len(label):].strip()
    return line.strip("\"' ")[:max_chars]


def evolve_prompts(policy, tokenizer, prompts: Sequence[str], key, sampling, *, mesh=None
                   ) -> list[str]:
    """The policy's rewrite of each prompt into a new one (``EVOLVE_INSTRUCTION``); empty rewrites
    and copies of an existing prompt are dropped, duplicates kept once."""
    asks = [EVOLVE_INSTRUCTION.format(prompt=p) for p in prompts]
    out, seen = [], set(prompts)
    for text in sample_answers(policy, tokenizer, asks, key, sampling.replace(n=1), mesh=mesh):
        p = clean_prompt(text)
        if len(p) >= 8 and p not in seen:
            out.append(p)
            seen.add(p)
    return out


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Atomically (a resumed run never reads half a file)."""
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]
