"""Alignment-potential selection (arXiv 2503.01864): selectors on hand-computed margins, z over
the whole dataset (batch size and an 8-device mesh do not change the selection), the implicit
margin against a plain per-pair forward, ap_select end to end (rows unchanged, M_AP recomputable,
cache hit on re-run) and a clear error for a bad record.

The 8 simulated CPU devices come from conftest.py (XLA_FLAGS set before jax is imported)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from _word_tokenizer import word_tokenizer

from _experiment_files import REPO, load_module
from align_jax.algorithms import ap_margins
from align_jax.data import PreferencePair, TokenizeConfig, render_prompt, selection
from align_jax.errors import ConfigError, DataError
from align_jax.models.config import DecoderConfig
from align_jax.models.llama import Decoder
from align_jax.models.shared_prefix import split_pair_batch
from align_jax.sharding import make_mesh

WORDS = ["[PAD]", "</s>", "<user>", "<assistant>"] + [f"w{i}" for i in range(20)]
VOCAB = {w: i for i, w in enumerate(WORDS)}
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")
# small maxima so truncation is exercised (prompts and responses below run past them)
TCFG = TokenizeConfig(max_prompt_len=6, max_completion_len=5, pad_multiple=4)


def tiny_tokenizer():
    return word_tokenizer(VOCAB, TEMPLATE)


def tiny_model(seed=0):
    cfg = DecoderConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64,
                        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        eos_token_id=VOCAB["</s>"], pad_token_id=0)
    return Decoder(cfg, rngs=nnx.Rngs(seed))


def toy_pairs(n=13, seed=0):
    r = np.random.default_rng(seed)

    def words(k):
        return " ".join(f"w{j}" for j in r.integers(0, 20, k))

    return [PreferencePair(words(r.integers(1, 9)), words(r.integers(1, 8)),
                           words(r.integers(1, 8))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(), tiny_tokenizer(), toy_pairs()


# ----------------------------------------------------------------------------- selectors

# m_ex has mean 0 and variance 2, m_im mean 2 and variance 2, so with w = 2
# M_AP·√2 = m_ex − 2·(m_im − 2) = [4, −5, 0, −1, 2].
M_EX = np.array([2.0, -1.0, 0.0, 1.0, -2.0])
M_IM = np.array([1.0, 4.0, 2.0, 3.0, 0.0])
EXPECTED = {"ap": [0, 4], "explicit": [0, 3], "implicit_large": [1, 3],
            "implicit_small": [4, 0]}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_selectors_pick_hand_computed_rows(name):
    s = selection.selector_scores(name, M_EX, M_IM, w=2.0)
    assert selection.select_top(s, 0.4).tolist() == EXPECTED[name]


def test_alignment_potential_values_and_whole_dataset_z():
    np.testing.assert_allclose(selection.alignment_potential(M_EX, M_IM, 2.0),
                               np.array([4, -5, 0, -1, 2]) / np.sqrt(2), atol=1e-12)
    # z-scores make M_AP invariant to the units of either margin
    np.testing.assert_allclose(selection.alignment_potential(10 * M_EX + 3, 0.1 * M_IM, 2.0),
                               selection.alignment_potential(M_EX, M_IM, 2.0), atol=1e-12)
    assert not selection.zscore(np.ones(4)).any()  # no spread: zeros, not NaN


def test_random_selector_is_seeded_and_names_are_checked():
    a = selection.select_top(selection.selector_scores("random", M_EX, M_IM, seed=3), 0.4)
    b = selection.select_top(selection.selector_scores("random", M_EX, M_IM, seed=3), 0.4)
    assert a.tolist() == b.tolist() and len(a) == 2
    with pytest.raises(ConfigError, match="implicit_small"):
        selection.selector_scores("largest", M_EX, M_IM)
    with pytest.raises(ConfigError, match="top=1.5"):
        selection.select_top(M_EX, 1.5)


# ----------------------------------------------------------------------------- implicit margin


def plain_ids(tok, prompt, response):
    """The templated, truncated text of one row, built by hand (no batching, no padding)."""
    p = tok(render_prompt(tok, prompt, TCFG), add_special_tokens=False)["input_ids"]
    p = p[-TCFG.max_prompt_len:]
    r = (tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    return p, r[:TCFG.max_completion_len]


def test_implicit_margin_matches_plain_forward(tiny):
    """Oracle: log_softmax of plain forwards; rows of one length share an unpadded batch."""
    model, tok, pairs = tiny
    out = ap_margins.compute_avg_logps(model, tok, pairs, TCFG, batch_size=4, progress=False)
    rows = [(i, side, *plain_ids(tok, p.prompt, getattr(p, side)))
            for i, p in enumerate(pairs) for side in ("chosen", "rejected")]
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(st, ids):
        return jax.nn.log_softmax(nnx.merge(graphdef, st)(ids).astype(jnp.float32), -1)

    by_len = {}
    for row in rows:
        by_len.setdefault(len(row[2]) + len(row[3]), []).append(row)
    checked = 0
    for group in by_len.values():
        logp = np.asarray(fwd(state, jnp.asarray([p + r for _, _, p, r in group], jnp.int32)))
        for b, (i, side, p, r) in enumerate(group):
            want = np.mean([logp[b, len(p) + j - 1, r[j]] for j in range(len(r))])
            np.testing.assert_allclose(out[f"avg_lp_{side}"][i], want, atol=2e-5)
            checked += 1
    assert checked == 2 * len(pairs)


def test_shared_prompt_pass_equals_plain_pass(tiny):
    """Each pair's prompt run once (models.shared_prefix) == the plain [2B, T] rows, and the
    split batch holds exactly the rows' tokens: prefix + continuation = the plain row."""
    model, tok, pairs = tiny
    split = 0
    for _, batch in ap_margins.pair_batches(tok, pairs, TCFG, 4):
        s = split_pair_batch(batch, min_saving=-1.0)  # split even where it saves nothing
        if s is None:
            continue
        split += 1
        for side in ("chosen", "rejected"):
            for b in range(batch[f"{side}_input_ids"].shape[0]):
                n = batch[f"{side}_attention_mask"][b].sum()
                pre = s["prefix_input_ids"][b][s["prefix_attention_mask"][b] > 0]
                rest = s[f"{side}_input_ids"][b][s[f"{side}_attention_mask"][b] > 0]
                assert np.concatenate([pre, rest]).tolist() == \
                    batch[f"{side}_input_ids"][b, :n].tolist()
                assert s[f"{side}_loss_mask"][b].sum() == batch[f"{side}_loss_mask"][b].sum()
                assert len(rest) >= 2 and s[f"{side}_loss_mask"][b, 0] == 0  # last prompt token
    assert split > 0
    kw = dict(batch_size=4, progress=False)
    plain = ap_margins.compute_avg_logps(model, tok, pairs, TCFG, share_prompts=None, **kw)
    shared = ap_margins.compute_avg_logps(model, tok, pairs, TCFG, share_prompts=-1.0, **kw)
    for k in plain:
        np.testing.assert_allclose(shared[k], plain[k], atol=1e-5)


def test_selection_independent_of_batch_size_and_mesh(tiny):
    model, tok, pairs = tiny
    m_ex = np.random.default_rng(1).normal(size=len(pairs))
    picks, margins = [], []
    for bs, mesh in ((1, None), (5, None), (8, make_mesh("-1,1,1"))):
        assert mesh is None or mesh.devices.size == 8
        out = ap_margins.compute_avg_logps(model, tok, pairs, TCFG, batch_size=bs, mesh=mesh,
                                           progress=False)
        m_im = np.abs(out["avg_lp_chosen"] - out["avg_lp_rejected"]).astype(np.float64)
        margins.append(m_im)
        picks.append({n: selection.select_top(selection.selector_scores(n, m_ex, m_im, w=1.0),
                                              0.4).tolist() for n in selection.SELECTORS})
    np.testing.assert_allclose(margins[1], margins[0], atol=1e-5)
    np.testing.assert_allclose(margins[2], margins[0], atol=1e-5)
    assert picks[0] == picks[1] == picks[2]


def test_implicit_cache_hit_does_not_rescore(tiny, tmp_path, monkeypatch):
    model, tok, pairs = tiny
    first = ap_margins.implicit_margins(model, tok, pairs, TCFG, cache_dir=tmp_path,
                                        progress=False)
    assert not first.hit and first.path.exists()

    def boom(*a, **k):
        raise AssertionError("re-scored despite the cache")

    monkeypatch.setattr(ap_margins, "compute_avg_logps", boom)
    again = ap_margins.implicit_margins(model, tok, pairs, TCFG, cache_dir=tmp_path,
                                        progress=False)
    assert again.hit
    np.testing.assert_array_equal(again.arrays["margin_implicit"],
                                  first.arrays["margin_implicit"])
    # a different truncation is a different cache entry
    other = ap_margins.implicit_cache_key(model, tok, pairs, TokenizeConfig(max_prompt_len=7))
    assert other != ap_margins.implicit_cache_key(model, tok, pairs, TCFG)


# ----------------------------------------------------------------------------- ap_select end to end


def _write_rows(path, pairs, scores=True):
    with open(path, "w") as f:
        for i, p in enumerate(pairs):
            row = {"id": f"t{i}", "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                   "extra": {"k": [i, "x"]}}
            if scores:
                row.update(score_chosen=float(i % 5) + 5.0, score_rejected=float(i % 3))
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model + tokenizer as an HF dir (what `model=` loads); no torch needed."""
    from align_jax.models import export_hf

    return export_hf(tiny_model(1), tiny_tokenizer(), tmp_path_factory.mktemp("tiny_hf"))


def test_ap_select_writes_consistent_rows_and_reuses_cache(model_dir, tmp_path, capsys):
    ap_select = load_module(REPO / "experiments/ap_select.py")
    data = tmp_path / "toy.jsonl"
    _write_rows(data, toy_pairs(10, seed=4))
    args = [f"model={model_dir}", f"data={data}", "explicit=dataset", "w=2.5", "top=0.5",
            "max_prompt_len=6", "max_completion_len=5", "pad_multiple=4", "progress=false",
            f"cache_dir={tmp_path / 'cache'}"]
    first = ap_select.main(args + [f"out_dir={tmp_path / 'a'}"])
    second = ap_select.main(args + [f"out_dir={tmp_path / 'b'}"])
    assert not first["implicit_cache_hit"] and second["implicit_cache_hit"]
    assert (tmp_path / "a" / "margins.png").stat().st_size > 0
    rows = [json.loads(x) for x in open(tmp_path / "a" / "selected.jsonl")]
    assert rows == [json.loads(x) for x in open(tmp_path / "b" / "selected.jsonl")]
    inputs = {r["id"]: r for r in map(json.loads, open(data))}
    assert len(rows) == 5
    for r in rows:  # the input row unchanged, plus exactly the three scores
        base = {k: v for k, v in r.items() if k not in ("margin_explicit", "margin_implicit",
                                                        "alignment_potential")}
        assert base == inputs[r["id"]]
        assert r["margin_explicit"] == r["score_chosen"] - r["score_rejected"]
    # M_AP recomputable from the two margins: z over the whole dataset — the selected rows are a
    # subset, so recompute over all rows from the full margin arrays of a top=1 run
    full = ap_select.main(args + ["top=1.0", f"out_dir={tmp_path / 'c'}"])
    assert full["implicit_cache_hit"]
    all_rows = [json.loads(x) for x in open(tmp_path / "c" / "selected.jsonl")]
    ap = selection.alignment_potential([r["margin_explicit"] for r in all_rows],
                                       [r["margin_implicit"] for r in all_rows], 2.5)
    np.testing.assert_allclose([r["alignment_potential"] for r in all_rows], ap, atol=1e-9)
    assert np.all(np.diff(ap) <= 0)  # sorted by the selector's score, best first
    by_id = {r["id"]: r for r in all_rows}
    for r in rows:
        assert r == by_id[r["id"]]
    assert [r["id"] for r in rows] == [r["id"] for r in all_rows[:5]]


def test_bad_record_names_file_record_and_fields(tmp_path):
    data = tmp_path / "bad.jsonl"
    _write_rows(data, toy_pairs(4))
    lines = open(data).read().splitlines()
    row = json.loads(lines[2])
    del row["score_rejected"]
    lines[2] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    pairs, records = selection.load_pair_rows(data)
    with pytest.raises(DataError) as e:
        ap_margins.explicit_margins("dataset", pairs, records)
    msg = str(e.value)
    assert str(data) in msg and "line 3" in msg and "score_rejected" in msg and "missing" in msg
    assert ap_margins.resolve_explicit("auto", records).startswith("sim:")
    with pytest.raises(DataError, match="'reference'"):
        ap_margins.explicit_margins("sim:rouge_l", pairs, records, reference_field="reference")
    with pytest.raises(ConfigError, match="rm:PATH or sim:NAME"):
        ap_margins.explicit_margins("oracle", pairs, records)


def test_ap_select_docstring_and_documented_keys():
    from align_jax.cli import describe

    mod = load_module(REPO / "experiments/ap_select.py")
    assert mod.__doc__.startswith("python experiments/ap_select.py")
    assert all(h for *_, h in describe(mod.Config())), "every Config field needs a # comment"
    assert len((REPO / "experiments/ap_select.py").read_text().splitlines()) <= 150
