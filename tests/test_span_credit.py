"""Span credit (algorithms.span_credit): the calibration term credits only the confidence
statement's tokens, the other components only the answer's; checked against hand-computed
advantages on a word tokenizer, and the per-token REINFORCE loss against the per-sample one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _word_tokenizer import word_tokenizer

from align_jax.algorithms.refalign import RefAlignConfig, Rollout
from align_jax.algorithms.span_credit import SpanCreditObjective, span_token_start
from align_jax.errors import ConfigError
from align_jax.losses.policy_gradient import reinforce_loss
from align_jax.rewards import confidence as C
from align_jax.sampling.sampler import SampleOutput

WORDS = ["[PAD]", "</s>", "It", "is", "Paris.", "Rome.", "I'm", "90%", "sure", "Confidence:",
         "80%", "20%", "<q>"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


def tok():
    return word_tokenizer(VOCAB, "{% for m in messages %}{{ m['content'] }}{% endfor %}")


@pytest.mark.parametrize("text, want", [
    ("It is Paris.\nConfidence: 80%", "It is Paris."),
    ("It is 43. I'm 99.9% confident", "It is 43."),
    ("Paris. My confidence is high", "Paris."),
    ("Paris.", None),
])
def test_answer_end_marks_where_the_statement_begins(text, want):
    end = C.answer_end(text)
    assert (None if end is None else text[:end]) == want
    assert C.strip_confidence(text) == (want if want is not None else text)


def test_span_token_start_on_words():
    t = tok()
    ids = [VOCAB[w] for w in "It is Paris. Confidence: 80% </s>".split()]
    text = "It is Paris. Confidence: 80%"
    assert span_token_start(t, ids, C.answer_end(text), ["</s>"]) == 3  # "Confidence:"
    ids = [VOCAB[w] for w in "Paris. I'm 90% sure </s>".split()]
    assert span_token_start(t, ids, C.answer_end("Paris. I'm 90% sure"), ["</s>"]) == 1  # "I'm"
    assert span_token_start(t, ids[:1], 99, ["</s>"]) == 1  # past the end: no span token


def _rollout(t, responses, n_tokens=6):
    rows = [[VOCAB[w] for w in r.split()] for r in responses]
    toks = np.zeros((len(rows), n_tokens), np.int32)
    mask = np.zeros((len(rows), n_tokens), np.float32)
    for i, r in enumerate(rows):
        toks[i, :len(r)], mask[i, :len(r)] = r, 1.0
    R, P = len(rows), 2
    out = SampleOutput(tokens=toks, logprobs=np.zeros_like(mask), logprobs_raw=np.zeros_like(mask),
                       lengths=mask.sum(1).astype(np.int32), mask=mask,
                       stopped=np.ones(R, bool), prompt_ids=np.full((R, P), VOCAB["<q>"], np.int32),
                       prompt_mask=np.ones((R, P), np.int32))
    texts = [r.replace(" </s>", "") for r in responses]
    return Rollout(out=out, texts=texts, records=[{} for _ in rows])


def test_span_credit_advantages_hand_computed():
    """K = 2, two prompts. Mean baseline per component: head = 1·Δquality + 2·Δcorrect on the
    answer tokens, tail = 2·Δbrier on the statement's tokens (incl. EOS), both on the statement's
    first token (it ends the answer); a row without a statement gets head + tail on every
    token; prompt positions and padding get 0."""
    t = tok()
    ro = _rollout(t, ["Paris. Confidence: 80% </s>", "Rome. Confidence: 20% </s>",
                      "It is Paris. </s>", "Paris. I'm 90% sure </s>"])
    comps = {"quality": (np.array([0.9, 0.3, 0.8, 0.6]), 1.0),
             "correct": (np.array([1.0, 0.0, 1.0, 1.0]), 2.0),
             "brier": (np.array([-0.04, -0.04, -1.0, -0.01]), 2.0)}
    obj = SpanCreditObjective(RefAlignConfig(k=2), t, ("brier",), C.answer_end)
    batch, stats = obj.make_batch(ro, comps)
    head = np.array([0.3 + 1.0, -0.3 - 1.0, 0.1 + 0.0, -0.1 + 0.0])
    tail = np.array([0.0, 0.0, 2 * -0.495, 2 * 0.495])
    adv = batch["adv"][:, 1:]  # train layout: P − 1 = 1 prompt position first
    assert np.all(batch["adv"][:, 0] == 0)
    both = head + tail
    np.testing.assert_allclose(adv[0, :4], [head[0], both[0], tail[0], tail[0]], atol=1e-6)
    np.testing.assert_allclose(adv[1, :4], [head[1], both[1], tail[1], tail[1]], atol=1e-6)
    np.testing.assert_allclose(adv[2, :4], [both[2]] * 4, atol=1e-6)  # no statement
    np.testing.assert_allclose(adv[3, :5], [head[3], both[3]] + [tail[3]] * 3, atol=1e-6)
    assert np.all(adv[0, 4:] == 0) and np.all(adv[3, 5:] == 0)  # padding
    assert stats["span/has_frac"] == 0.75
    np.testing.assert_allclose(stats["reward/total"], 0.65 + 2 * 0.75 + 2 * -0.2725, atol=1e-5)
    # a response that is only the statement: its first token also answers for the answer
    ro = _rollout(t, ["Confidence: 20% </s>", "Paris. Confidence: 80% </s>"])
    comps = {"correct": (np.array([0.0, 1.0]), 2.0), "brier": (np.array([-0.04, -0.04]), 2.0)}
    batch, _ = obj.make_batch(ro, comps)
    np.testing.assert_allclose(batch["adv"][0, 1:4], [-1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(batch["adv"][1, 1:5], [1.0, 1.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ConfigError, match="span_components"):
        SpanCreditObjective(RefAlignConfig(k=2), t, ("order",), C.answer_end).make_batch(ro, comps)


def test_span_credit_first_token_head_only():
    """first_token="head": the token that ends the answer gets the answer's terms only, so a
    well-judged level stated after a wrong (e.g. cut-short) answer cannot pay for ending it
    there; the level's tokens get the calibration term only; an answer-less statement's first
    token still carries the answer's penalty."""
    t = tok()
    obj = SpanCreditObjective(RefAlignConfig(k=2), t, ("brier",), C.answer_end, first_token="head")
    ro = _rollout(t, ["Paris. Confidence: 80% </s>", "Rome. Confidence: 20% </s>"])
    comps = {"correct": (np.array([1.0, 0.0]), 2.0), "brier": (np.array([-0.04, -0.04]), 2.0)}
    adv = obj.make_batch(ro, comps)[0]["adv"][:, 1:]
    np.testing.assert_allclose(adv[0, :4], [1.0, 1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(adv[1, :4], [-1.0, -1.0, 0.0, 0.0], atol=1e-6)
    # wrong answer at a low level (tail +), right one at a high level: the tail stays on the level
    comps = {"correct": (np.array([1.0, 0.0]), 2.0), "brier": (np.array([-0.04, -0.0]), 2.0)}
    adv = obj.make_batch(ro, comps)[0]["adv"][:, 1:]
    np.testing.assert_allclose(adv[1, :4], [-1.0, -1.0, 0.04, 0.04], atol=1e-6)
    ro = _rollout(t, ["Confidence: 20% </s>", "Paris. Confidence: 80% </s>"])
    comps = {"correct": (np.array([0.0, 1.0]), 2.0), "brier": (np.array([-0.04, -0.04]), 2.0)}
    adv = obj.make_batch(ro, comps)[0]["adv"][:, 1:]
    np.testing.assert_allclose(adv[0, :3], [-1.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ConfigError, match="first_token='answer'"):
        SpanCreditObjective(RefAlignConfig(k=2), t, ("brier",), C.answer_end, first_token="answer")


def test_per_token_advantage_equals_per_sample_when_constant():
    """reinforce_loss with a [B, T] advantage that is constant over each row's tokens equals the
    [B] form in value and gradient (with and without the importance ratio); a token with zero
    advantage contributes no gradient."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 0, 0, 0]], jnp.float32)
    adv_b = jnp.asarray([0.7, -1.2, 0.3])
    old = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32) * 0.1
    for kw in ({}, {"old_logps_bt": old, "clip_ratio": 0.2}):
        f1 = lambda x: reinforce_loss(x, mask, adv_b, **kw)[0]  # noqa: E731
        adv_bt = adv_b[:, None] * jnp.ones((3, 5))
        f2 = lambda x: reinforce_loss(x, mask, adv_bt, **kw)[0]  # noqa: E731
        np.testing.assert_allclose(f1(logits), f2(logits), rtol=1e-6)
        np.testing.assert_allclose(jax.grad(f1)(logits), jax.grad(f2)(logits), rtol=1e-6)
    adv_bt = jnp.zeros((3, 5)).at[0, 1].set(2.0)
    g = jax.grad(lambda x: reinforce_loss(x, mask, adv_bt)[0])(logits)
    assert float(g[0, 1]) == pytest.approx(-2.0 / float(mask.sum()))
    assert float(jnp.abs(g).sum()) == pytest.approx(2.0 / float(mask.sum()))


def test_confidence_experiment_credit_knob():
    from _experiment_files import REPO, load_module

    mod = load_module(REPO / "experiments" / "refalign_confidence.py")
    assert mod.Config().credit == "split"
    with pytest.raises(ConfigError, match="credit='tokens'"):
        mod.Config(credit="tokens")
    with pytest.raises(ConfigError, match="first_token='head'"):
        mod.Config(first_token="head")  # the experiment's names: both | answer


def test_brier_level_advantage_hand_computed():
    """B(c_k, y_k) − B(c̄_−k, y_k): the other samples' mean level scored on this sample's answer;
    0.5 when no other sample stated one; a missing level scores the penalty."""
    nan = float("nan")
    c = np.array([[0.8, 0.2], [0.8, 0.2], [0.9, 0.5], [nan, 0.6], [0.3, nan]])
    y = np.array([[1, 0], [0, 1], [1, 1], [1, 1], [0, 0]], np.float32)
    got = C.brier_level_advantage(c, y, missing_penalty=-1.0)
    want = [[(0.2 - 1) ** 2 - 0.2 ** 2, 0.8 ** 2 - 0.2 ** 2],  # right at 80%, wrong at 20%: both +
            [0.2 ** 2 - 0.8 ** 2, (0.8 - 1) ** 2 - (0.2 - 1) ** 2],  # the levels swapped: both −
            [0.5 ** 2 - 0.1 ** 2, 0.1 ** 2 - 0.5 ** 2],
            [-1 + 0.4 ** 2, (0.5 - 1) ** 2 - 0.4 ** 2],  # the other has none: c̄ = 0.5
            [-0.09 + 0.5 ** 2, -1 + 0.3 ** 2]]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # unbiased: its expectation over the level is the Brier reward's, up to a level-free term
    rng = np.random.default_rng(0)
    c = rng.uniform(size=(4000, 2))
    y = (rng.uniform(size=(4000, 2)) < 0.3).astype(np.float32)
    a = C.brier_level_advantage(c, y)
    hi = c[:, 0] > 0.5
    assert a[hi, 0].mean() < a[~hi, 0].mean()  # at 30% accuracy a low level pays more


def test_confidence_reward_with_the_level_baseline():
    from _experiment_files import REPO, load_module

    mod = load_module(REPO / "experiments" / "refalign_confidence.py")
    sim = lambda cands, refs: np.array([0.5 if r in c else 0.1 for c, r in zip(cands, refs)])  # noqa: E731
    fn = mod.confidence_reward(sim, k=2, alpha=2.0, missing_penalty=-1.0, form="brier",
                               correct_weight=2.0, level_baseline=True)
    out = fn(None, ["34\nConfidence: 80%", "43\nConfidence: 20%"], [{"reference": "34"}] * 2)
    assert out["brier"][1] == 0.0 and out[mod.LEVEL_ADVANTAGE][1] == 2.0
    np.testing.assert_allclose(out[mod.LEVEL_ADVANTAGE][0], [0.64 - 0.04, 0.64 - 0.04], atol=1e-6)
    cfg = mod.Config()
    assert cfg.level_baseline and cfg.calibration_components() == ("brier", mod.LEVEL_ADVANTAGE)
    assert mod.Config(calibration_baseline="prompt").calibration_components() == ("brier",)
    assert mod.Config(reward_form="order").calibration_components() == ("order",)


def test_balance_by_a_missing_field_fails_before_any_work():
    """train_between_evals checks the field before the held-out evaluation and the warm-up."""
    from types import SimpleNamespace

    from align_jax.experiment import train_between_evals

    cfg = SimpleNamespace(loop=SimpleNamespace(balance_by="topic"))
    calls = []
    with pytest.raises(ConfigError, match="balance_by='topic': no training record has that field"):
        train_between_evals(cfg, None, None, None, [{"prompt": "q"}], None,
                            lambda m: calls.append(m), label="x")
    assert calls == []
