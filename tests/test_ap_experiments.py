"""Alignment potential, parts 2 and 3 (arXiv 2503.01864): ap_compare's subsets all have one size
and its table's win rates / means are right on hand cases; self-play's best/worst pairing on a hand
case; both experiments end to end on a tiny llama + word tokenizer exported as HF dirs (started as
a user starts them: a subprocess with one CPU device, the default run directory), and resumed:
a finished selector / round is not redone, and the table is recomputable from the files the run
wrote."""
import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from _word_tokenizer import word_tokenizer

from _experiment_files import REPO
from align_jax.algorithms import ap_experiments as apx
from align_jax.data import selection
from align_jax.errors import ConfigError

WORDS = ["[PAD]", "</s>", "<user>", "<assistant>"] + [f"w{i}" for i in range(40)]
VOCAB = {w: i for i, w in enumerate(WORDS)}
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


# ----------------------------------------------------------------------------- hand cases


def test_subsets_have_one_size_and_follow_their_selector():
    r = np.random.default_rng(3)
    m_ex, m_im = r.normal(size=37), np.abs(r.normal(size=37))
    subs = apx.selector_subsets(m_ex, m_im, selection.SELECTORS, 0.2, w=2.5, seed=1)
    assert set(subs) == set(selection.SELECTORS)
    assert {len(v) for v in subs.values()} == {selection.num_selected(37, 0.2)} == {7}
    ap = selection.zscore(m_ex) - 2.5 * selection.zscore(m_im)
    np.testing.assert_array_equal(subs["ap"], np.argsort(-ap)[:7])
    np.testing.assert_array_equal(subs["explicit"], np.argsort(-m_ex)[:7])
    np.testing.assert_array_equal(subs["implicit_large"], np.argsort(-m_im)[:7])
    np.testing.assert_array_equal(subs["implicit_small"], np.argsort(m_im)[:7])
    assert len(set(subs["random"])) == 7
    with pytest.raises(ConfigError, match="unknown selector 'apx'"):
        apx.selector_subsets(m_ex, m_im, ("ap", "apx"), 0.2)
    more = apx.selector_subsets(m_ex, m_im, ("ap", "random"), 0.2, seed=1, random_runs=3)
    assert list(more) == ["ap", "random", "random_s1", "random_s2"]
    for k, name in enumerate(["random", "random_s1", "random_s2"]):  # seeds 1, 2, 3
        draw = selection.select_top(np.random.default_rng(1 + k).random(37), 0.2)
        np.testing.assert_array_equal(more[name], draw)
    assert len({tuple(sorted(v)) for v in more.values()}) == 4  # four different subsets
    assert list(apx.selector_subsets(m_ex, m_im, ("ap",), 0.2, random_runs=3)) == ["ap"]
    with pytest.raises(ConfigError, match="random_runs=0"):
        apx.selector_subsets(m_ex, m_im, ("random",), 0.2, random_runs=0)


def test_win_rate_and_table_on_a_hand_case():
    before = [0.0, 2.0, 5.0, 1.0]
    # win, tie (½), loss, win → 2.5 / 4
    assert apx.win_rate([1.0, 2.0, 3.0, 4.0], before) == 0.625
    assert apx.win_rate([9.0, 9.0, 9.0, 9.0], before) == 1.0
    assert apx.win_rate(before, before) == 0.5
    rows = apx.compare_rows(before, {"ap": [1.0, 2.0, 3.0, 4.0], "random": [0.0, 0.0, 0.0, 0.0]},
                            {"ap": 7, "random": 7})
    assert [r["selector"] for r in rows] == ["initial policy", "ap", "random"]
    assert rows[0]["mean_reward"] == 2.0 and rows[0]["win_rate"] is None
    assert rows[1]["mean_reward"] == 2.5 and rows[1]["win_rate"] == 0.625
    assert rows[1]["sem"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert rows[2]["win_rate"] == pytest.approx((0 + 0 + 0 + 0) / 4 + 0.5 * 1 / 4)  # one tie (0 = 0)
    table = apx.compare_table(rows)
    assert "| ap | 7 | 2.5000 ± 0.6455 | 0.625 |" in table
    assert "| initial policy | 0 | 2.0000 ± 1.0801 | — |" in table
    with pytest.raises(ValueError):
        apx.win_rate([1.0], [1.0, 2.0])


def test_unchanged_answers_keep_the_initial_reward_and_tie():
    """The judge's float noise (its result for one text moves with the batch) must not decide a
    win: an unchanged answer takes the initial reward, only changed answers are scored."""
    calls = []

    def noisy(prompts, answers, refs):
        calls.append(list(answers))
        return np.array([len(a) + 1e-6 * len(calls) for a in answers])

    prompts, refs = ["p0", "p1", "p2"], ["r0", "r1", "r2"]
    initial = {"answers": ["a", "bb", "ccc"],
               "rewards": apx.score_vs_initial(noisy, prompts, ["a", "bb", "ccc"], refs).tolist()}
    after = apx.score_vs_initial(noisy, prompts, ["a", "bbbb", "ccc"], refs, initial)
    assert calls[-1] == ["bbbb"]  # only the changed answer went to the judge
    assert after[0] == initial["rewards"][0] and after[2] == initial["rewards"][2]
    assert after[1] == pytest.approx(4 + 2e-6)
    assert apx.win_rate(after, initial["rewards"]) == pytest.approx((0.5 + 1 + 0.5) / 3)
    same = apx.score_vs_initial(noisy, prompts, initial["answers"], refs, initial)
    assert len(calls) == 2 and apx.win_rate(same, initial["rewards"]) == 0.5


def test_comparison_with_random_runs_is_paired_hand_case():
    rew = {"ap": [1.0, 2.0, 3.0], "random": [0.0, 1.0, 0.0], "random_s1": [1.0, 1.0, 1.0],
           "random_s2": [2.0, 0.0, 0.0]}
    rows = {r["selector"]: r for r in apx.compare_rows([0.0] * 3, rew, dict.fromkeys(rew, 3))}
    # ap − mean of the three random runs per prompt: 1 − 1, 2 − 2/3, 3 − 1/3
    diff = np.array([0.0, 4 / 3, 8 / 3])
    assert rows["ap"]["vs_random"] == pytest.approx(diff.mean())
    assert rows["ap"]["vs_random_sem"] == pytest.approx(diff.std(ddof=1) / np.sqrt(3))
    assert rows["ap"]["random_beaten"] == "3/3"
    # a random run against the OTHER two: random_s1 (mean 1) beats random (1/3) and random_s2 (2/3)
    assert rows["random_s1"]["random_beaten"] == "2/2"
    assert rows["random_s1"]["vs_random"] == pytest.approx(np.mean([1 - 1, 1 - 0.5, 1 - 0]))
    assert rows["random"]["random_beaten"] == "0/2"
    assert rows["initial policy"]["vs_random"] is None
    table = apx.compare_table(list(rows.values()))
    assert "| ap | 3 | 2.0000 ± 0.5774 | 1.000 | +1.3333 ± 0.7698 | 3/3 |" in table
    # without random runs there is nothing to compare with
    alone = apx.compare_rows([0.0], {"ap": [1.0]}, {"ap": 1})
    assert alone[1]["vs_random"] is None and "| — | — |" in apx.compare_table(alone)


def test_extra_held_out_prompts_drop_what_the_pool_answers(tmp_path):
    from align_jax.data.schemas import PreferencePair
    from align_jax.errors import DataError

    pool = [PreferencePair("Name the capital of Peru.", "The capital of Peru is Lima.", "Cusco."),
            PreferencePair("When does water freeze?", "At 0 degrees Celsius.", "At 10.")]
    f = tmp_path / "qa.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is the capital of Peru?", "answer": "Lima", "split": "eval"},  # leaked
        {"question": "Name the capital of Peru.", "answer": "x"},  # a pool prompt
        {"question": "Name the capital of Chile.", "answer": "Santiago", "split": "train"},
        {"question": "Name the capital of Cuba.", "answer": "Havana", "split": "eval"},
        {"prompt": "Name the capital of Cuba.", "reference": "Havana"},  # already kept
        {"prompt": "Say something kind."},
        {"question": "Which element is Li?", "answer": "Li"},  # inside "Lima", not a word of it
        {"question": "What is 2 + 2?", "answer": 4},
        {"question": "What is 5 - 5?", "answer": 0}]) + "\n")  # leaked: 0 is an answer too
    prompts, refs = apx.extra_held_out(str(f), pool, ["Say something kind."])
    assert prompts == ["Name the capital of Cuba.", "Which element is Li?", "What is 2 + 2?"]
    assert refs == ["Havana", "Li", "4"]
    assert apx.extra_held_out(None, pool, []) == ([], [])
    f.write_text('{"question": "ok?"}\n{"answer": "no question"}\n')
    with pytest.raises(DataError, match="line 2"):
        apx.extra_held_out(str(f), pool, [])
    with pytest.raises(ConfigError, match="eval_extra='nope.jsonl'"):
        apx.extra_held_out("nope.jsonl", pool, [])
    # the default: the bundled confidence questions, none of them answered by the bundled pool
    pairs, _, held_prompts, _ = apx.pool_and_held_out(None)
    bundled, answers = apx.extra_held_out("confidence_qa", pairs, held_prompts)
    assert len(bundled) == 88 and not set(bundled) & set(held_prompts)
    assert not any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", p.chosen)
                   for a in answers for p in pairs)


def test_best_worst_pairs_hand_case():
    prompts = ["a", "b", "c"]
    answers = ["a1", "a2", "a3", "b1", "b2", "b3", "c1", "c1", "c2"]
    scores = [0.2, 0.9, 0.1,  # a: best a2, worst a3
              0.5, 0.5, 0.5,  # b: all tie → no pair
              0.7, 0.3, 0.7]  # c: best c1 (first of the tie), worst c1 → same text: no pair
    pairs, m_ex, kept = apx.best_worst_pairs(prompts, answers, scores, 3)
    assert kept == [0] and [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("a", "a2", "a3")]
    np.testing.assert_allclose(m_ex, [0.8])
    assert apx.clean_prompt('\n Instruction: "Name a red fruit."\nmore') == "Name a red fruit."


# ----------------------------------------------------------------------------- end to end (tiny)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny llama policy and a tiny reward model (HF dirs + the word tokenizer) and 20 pairs."""
    from align_jax.algorithms.reward_model import add_score_head
    from align_jax.models import export_hf
    from align_jax.models.config import DecoderConfig
    from align_jax.models.llama import Decoder
    from align_jax.models.score_head import save_scored_decoder

    d = tmp_path_factory.mktemp("ap_tiny")
    tok = word_tokenizer(VOCAB, TEMPLATE)
    cfg = DecoderConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=VOCAB["</s>"],
                        pad_token_id=0, max_position_embeddings=256)
    export_hf(Decoder(cfg, rngs=nnx.Rngs(0)), tok, d / "policy")
    rm = add_score_head(Decoder(cfg, rngs=nnx.Rngs(1)), tok, seed=1)
    save_scored_decoder(rm, d / "rm")
    tok.save_pretrained(str(d / "rm"))
    r = np.random.default_rng(0)

    def words(k):
        return " ".join(f"w{j}" for j in r.integers(0, 40, k))

    with open(d / "pairs.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"prompt": words(4), "chosen": words(3), "rejected": words(5)}) + "\n")
    return d


def start(args, env):
    res = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


RUN_DIR_LINE = re.compile(r"^\[align_jax\] run directory: (.+)$", re.M)


@contextlib.contextmanager
def default_run_dir(args, env):
    """``args`` started as a user starts them, with NO out_dir=: the run goes to the default
    runs/<name>-<time> under the repo (tidy absolute tmp paths once hid a crash there). Yields
    that directory; removed afterwards."""
    res = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1800)
    found = RUN_DIR_LINE.findall(res.stdout)
    try:
        assert res.returncode == 0 and found, res.stdout[-3000:] + res.stderr[-6000:]
        assert Path(found[0]).parent == REPO / "runs", found[0]
        yield Path(found[0])
    finally:
        for run in found:
            shutil.rmtree(run, ignore_errors=True)


TINY_TRAIN = ["steps=2", "lr=0.01", "batch_size=2", "ref_batch_size=4", "eval_examples=2",
              "max_prompt_len=16", "max_completion_len=16", "pad_multiple=8"]


def after_of(out, selector):
    return json.loads((out / selector / "heldout.json").read_text())["rewards"]


def test_ap_compare_tiny_end_to_end_and_resume(tiny_dirs, run_env):
    args = [REPO / "experiments/ap_compare.py", f"model={tiny_dirs / 'policy'}",
            f"data={tiny_dirs / 'pairs.jsonl'}", f"rm={tiny_dirs / 'rm'}", "selectors=ap,random",
            "random_runs=2",
            "top=0.25", "explicit=sim:rouge_l", "reference_field=prompt", "eval_max_new_tokens=4",
            *TINY_TRAIN]
    with default_run_dir(args, run_env) as out:
        check_ap_compare_run(out)
        rows = json.loads((out / "results.json").read_text())
        stamp = (out / "ap" / "heldout.json").stat().st_mtime_ns
        res = start([*args, f"out_dir={out}"], run_env)  # resumed: nothing is trained again
        assert "training on" not in res.stdout
        assert (out / "ap" / "heldout.json").stat().st_mtime_ns == stamp
        assert json.loads((out / "results.json").read_text()) == rows


def check_ap_compare_run(out):
    subsets = json.loads((out / "subsets.json").read_text())
    assert subsets["pool"] == 18 and subsets["explicit_margin"] == "sim:rouge_l"
    assert (len(subsets["ap"]) == len(subsets["random"]) == len(subsets["random_s1"])
            == selection.num_selected(18, 0.25) == 5)
    initial = json.loads((out / "initial.json").read_text())
    assert len(initial["prompts"]) == 2 == len(initial["rewards"])
    rows = json.loads((out / "results.json").read_text())
    for row in rows[1:]:
        after = after_of(out, row["selector"])
        assert row["win_rate"] == apx.win_rate(after, initial["rewards"])
        assert row["mean_reward"] == pytest.approx(np.mean(after))
        assert (out / row["selector"] / "metrics.jsonl").is_file()
        assert not (out / row["selector"] / "checkpoints").exists()
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| ap | 5 |" in (out / "summary.md").read_text()
    assert [r["selector"] for r in rows] == ["initial policy", "ap", "random", "random_s1"]
    rand = np.mean([after_of(out, s) for s in ("random", "random_s1")], axis=0)
    assert rows[1]["vs_random"] == pytest.approx(np.mean(np.asarray(after_of(out, "ap")) - rand))


@pytest.mark.parametrize("labeller", ["judge", "sim:rouge_l"])
def test_ap_compare_on_policy_pairs_are_the_labellers_best_and_worst(labeller, tiny_dirs, run_env,
                                                                     tmp_path):
    """pairs_from=policy: the pool is the initial policy's answers, labelled by the judge (the
    reward model: its scores recomputed here) or by a labeller apart from it (ROUGE-L against the
    pool pair's chosen answer), each prompt's best / worst answer as the pair."""
    from align_jax.rewards.reward_model import load_reward_model
    from align_jax.rewards.text_metrics import rouge_l

    out = tmp_path / "cmp_policy"
    start([REPO / "experiments/ap_compare.py", f"model={tiny_dirs / 'policy'}",
           f"data={tiny_dirs / 'pairs.jsonl'}", f"rm={tiny_dirs / 'rm'}", "selectors=ap,explicit",
           "random_runs=1", "pairs_from=policy", "n=3", "max_new_tokens=5", "top=0.5",
           f"labeller={labeller}", "eval_max_new_tokens=4", f"out_dir={out}", *TINY_TRAIN],
          run_env)
    samples = apx.read_jsonl(out / "pool_samples.jsonl")
    assert len(samples) == 18 and all(len(r["answers"]) == 3 for r in samples)
    prompts = [r["prompt"] for r in samples for _ in range(3)]
    answers = [a for r in samples for a in r["answers"]]
    if labeller == "judge":
        expected = load_reward_model(tiny_dirs / "rm", progress=False)(prompts, answers)
    else:  # the reference is the chosen answer of the pool pair with that prompt
        chosen = {}
        for line in (tiny_dirs / "pairs.jsonl").read_text().splitlines():
            row = json.loads(line)
            chosen.setdefault(row["prompt"], row["chosen"])
        expected = [rouge_l(a, chosen[p]) for p, a in zip(prompts, answers)]
    np.testing.assert_allclose([x for r in samples for x in r["scores"]], expected, atol=1e-5)
    pairs, m_ex, _ = apx.best_worst_pairs([r["prompt"] for r in samples], answers,
                                          [x for r in samples for x in r["scores"]], 3)
    subsets = json.loads((out / "subsets.json").read_text())
    assert subsets["pool"] == len(pairs) > 0
    assert subsets["explicit_margin"].startswith("judge" if labeller == "judge" else "labeller")
    k = selection.num_selected(len(pairs), 0.5)
    # explicit = the k largest score gaps of the labeller
    assert sorted(subsets["explicit"]) == sorted(np.argsort(-m_ex, kind="stable")[:k].tolist())
    assert len(subsets["ap"]) == k and (out / "ap" / "heldout.json").is_file()


def test_ap_compare_rejects_what_pairs_from_policy_would_ignore(tmp_path):
    """Checked before anything loads: a bad pairs_from, an explicit margin it would ignore, a
    missing file."""
    from _experiment_files import load_module

    main = load_module(REPO / "experiments/ap_compare.py").main
    with pytest.raises(ConfigError, match="expected data or policy"):
        main(["pairs_from=polcy", f"out_dir={tmp_path / 'a'}"])
    with pytest.raises(ConfigError, match="do not apply with pairs_from=policy"):
        main(["pairs_from=policy", "explicit=dataset", f"out_dir={tmp_path / 'b'}"])
    for bad in (["labeller=sim:rouge_l"], ["pairs_from=policy", "labeller=rouge_l"],
                ["pairs_from=policy", "labeller=sim:"]):
        with pytest.raises(ConfigError, match="expected judge, rm:PATH or sim:NAME"):
            main([*bad, f"out_dir={tmp_path / 'c'}"])
    # files are read before the run dir is made: a missing one leaves no half-made run behind
    from align_jax.errors import UserError

    with pytest.raises(UserError, match="nope.jsonl"):
        main([f"data={tmp_path / 'nope.jsonl'}", f"out_dir={tmp_path / 'd'}"])
    with pytest.raises(ConfigError, match="eval_extra='nope.jsonl'"):
        main(["eval_extra=nope.jsonl", f"out_dir={tmp_path / 'e'}"])
    # a similarity name typo fails before the reward model trains (labeller) or anything loads
    with pytest.raises(ConfigError, match="labeller='sim:bertscor': unknown similarity scorer"):
        main(["pairs_from=policy", "labeller=sim:bertscor", f"out_dir={tmp_path / 'f'}"])
    with pytest.raises(ConfigError, match="judge='sim:rougel': unknown similarity scorer"):
        main(["judge=sim:rougel", f"out_dir={tmp_path / 'g'}"])
    with pytest.raises(ConfigError, match="judge='rouge_l': expected rm:PATH or sim:NAME"):
        main(["judge=rouge_l", f"out_dir={tmp_path / 'h'}"])
    assert not any((tmp_path / d).exists() for d in "abcdefgh")


def test_ap_selfplay_bad_data_or_scorer_leaves_no_run_dir(tmp_path):
    from _experiment_files import load_module

    from align_jax.errors import UserError

    main = load_module(REPO / "experiments/ap_selfplay.py").main
    with pytest.raises(UserError, match="nope.jsonl"):
        main([f"data={tmp_path / 'nope.jsonl'}", f"out_dir={tmp_path / 'a'}"])
    with pytest.raises(ConfigError, match="scorer='rouge_l'"):
        main(["scorer=rouge_l", f"out_dir={tmp_path / 'b'}"])
    assert not any((tmp_path / d).exists() for d in "ab")


def test_ap_selfplay_two_tiny_rounds_then_resume_a_third(tiny_dirs, run_env):
    base = [REPO / "experiments/ap_selfplay.py", f"model={tiny_dirs / 'policy'}",
            f"data={tiny_dirs / 'pairs.jsonl'}", "scorer=sim:rouge_l", "prompts_per_round=6",
            "n=3", "max_new_tokens=6", "evolve_top=2", "top=0.5", *TINY_TRAIN]
    with default_run_dir([*base, "rounds=2"], run_env) as out:
        for k in (0, 1):
            rdir = out / "rounds" / f"r{k}"
            pairs = [json.loads(x) for x in (rdir / "pairs.jsonl").read_text().splitlines()]
            sel = [json.loads(x) for x in (rdir / "selected.jsonl").read_text().splitlines()]
            ap = selection.alignment_potential([p["margin_explicit"] for p in pairs],
                                               [p["margin_implicit"] for p in pairs], 2.5)
            np.testing.assert_allclose([p["alignment_potential"] for p in pairs], ap, atol=1e-9)
            # the top half, or one full batch (2) when that is more
            assert len(sel) == max(selection.num_selected(len(pairs), 0.5), min(len(pairs), 2))
            assert [s["alignment_potential"] for s in sel] == sorted(ap, reverse=True)[:len(sel)]
            samples = [json.loads(x) for x in (rdir / "samples.jsonl").read_text().splitlines()]
            assert all(len(s["answers"]) == len(s["scores"]) == 3 for s in samples)
            for p in pairs:  # chosen = the prompt's best-scored answer, rejected = its worst
                s = next(s for s in samples if s["prompt"] == p["prompt"])
                assert p["margin_explicit"] == pytest.approx(max(s["scores"]) - min(s["scores"]))
            assert (rdir / "train" / "metrics.jsonl").is_file()
            assert json.loads((rdir / "round.json").read_text())["round"] == k
        evolved = [json.loads(x)["prompt"] for x in
                   (out / "rounds/r0/evolved.jsonl").read_text().splitlines()]
        r1 = [json.loads(x)["prompt"]
              for x in (out / "rounds/r1/prompts.jsonl").read_text().splitlines()]
        assert r1[:len(evolved)] == evolved and len(r1) == 6
        assert not (out / "rounds/r0/policy").exists() and (out / "rounds/r1/policy").is_dir()
        stamp = (out / "rounds/r1/round.json").stat().st_mtime_ns
        # resumed with a third round: rounds 0 and 1 are kept, round 2 starts from r1's policy
        start([*base, "rounds=3", f"out_dir={out}"], run_env)
        assert (out / "rounds/r1/round.json").stat().st_mtime_ns == stamp
        assert (out / "rounds/r2/round.json").is_file() and (out / "rounds/r2/policy").is_dir()
        assert not (out / "rounds/r1/policy").exists()
        assert "| 2 |" in (out / "rounds.md").read_text()


@pytest.mark.parametrize("name", ["ap_compare", "ap_selfplay"])
def test_configs_describe_every_key_and_round_trip(name, tmp_path):
    """What test_cli checks for the one-run experiments (these two are NOT_TRAINING there)."""
    from _experiment_files import load_module
    from align_jax.cli import config_dict, describe, parse_overrides

    Config = load_module(REPO / f"experiments/{name}.py").Config
    assert not [k for k, _, _, h in describe(Config()) if not h]
    cfg = parse_overrides(Config(), ["steps=3", "seed=5", "lr=0.001", "out_dir=somewhere"])
    assert cfg.train.steps == 3 and cfg.train.optim.lr == 0.001
    (tmp_path / "config.json").write_text(json.dumps(config_dict(cfg)))
    assert parse_overrides(Config(), [f"config={tmp_path}"]) == cfg.__class__(
        **{**cfg.__dict__, "out_dir": None})
