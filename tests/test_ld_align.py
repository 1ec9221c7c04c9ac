"""LD-Align: the guide's latent distance (0 for identical texts, growing as a reference is
corrupted), its reconstruction loss falling on bundled-like data, the weighted DPO loss against
plain DPO and a hand computation, weights without gradient, and the round bookkeeping."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from _word_tokenizer import word_tokenizer

from align_jax.algorithms.latent_guide import GuideTrainConfig, make_latent_fn, train_guide
from align_jax.algorithms.ld_align import RoundsConfig, round_bounds, train_ld_align
from align_jax.algorithms.preference import TrainConfig
from align_jax.algorithms.preference_step import make_loss_fn
from align_jax.data.tokenize import TokenizeConfig
from align_jax.losses import PairLogps, PrefConfig, latent_weights, preference_loss
from align_jax.models.config import DecoderConfig
from align_jax.models.encoder import Encoder, EncoderConfig
from align_jax.models.latent_ae import GuideConfig, build_guide, latent_distance
from align_jax.models.llama import Decoder, LoRAParam
from align_jax.sampling.sampler import SamplingConfig
from align_jax.train.optim import OptimConfig

WORDS = ["[PAD]", "</s>", "<user>", "<assistant>"] + [f"w{i}" for i in range(16)] + [
    f"n{i}" for i in range(8)]
VOCAB = {w: i for i, w in enumerate(WORDS)}
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")

_R = np.random.RandomState(1)
# (prompt, reference) pairs over the w-words; corruption swaps reference words for n-words
REFERENCES = [(" ".join(f"w{j}" for j in _R.randint(4, 16, 3)),
               " ".join(f"w{j}" for j in _R.randint(4, 16, 8))) for _ in range(8)]
NOISE = [f"n{i}" for i in range(8)]


@pytest.fixture(scope="module")
def minilm():
    """A deterministic tiny BERT-shaped encoder (random weights, seed 0) and its word tokenizer
    (the sentence pair is the two texts one after the other)."""
    cfg = EncoderConfig(model_type="bert", vocab_size=len(VOCAB), hidden_size=32, num_layers=2,
                        num_heads=4, intermediate_size=64, max_position_embeddings=64)
    return Encoder(cfg, rngs=nnx.Rngs(0)), word_tokenizer(VOCAB, TEMPLATE)


def tiny_decoder(seed=0):
    cfg = DecoderConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=VOCAB["</s>"],
                        pad_token_id=0, lora_rank=4, lora_alpha=8.0,
                        lora_targets=("wq", "wv", "wo", "w_down"))
    dec = Decoder(cfg, rngs=nnx.Rngs(seed))
    # a random init at std 0.02 keeps every logit ≈ 0 (the LoRA adapters could not make any
    # distribution peaked); a trained model's embeddings are O(1)
    for name in ("embed", "lm_head"):
        if hasattr(dec, name):
            var = getattr(dec, name)
            var[...] = var[...] * 30.0
    return dec


def corrupt(text: str, frac: float) -> str:
    words = text.split()
    n = round(frac * len(words))
    return " ".join(NOISE[i % len(NOISE)] if i < n else w for i, w in enumerate(words))


def test_latent_distance_is_zero_for_identical_texts_and_grows_with_corruption(minilm):
    enc, enc_tok = minilm
    guide = build_guide(tiny_decoder(), enc, GuideConfig(latent_dim=32, prefix_len=2,
                                                         encoder_max_len=24), seed=0)
    phi = make_latent_fn(guide, enc_tok, batch_size=8)
    prompts = [p for p, _ in REFERENCES]
    refs = [r for _, r in REFERENCES]
    z_ref = phi(prompts, refs)
    assert np.asarray(latent_distance(z_ref, phi(prompts, refs))).max() == 0.0
    means = []
    for frac in (0.25, 0.5, 0.75, 1.0):
        s = np.asarray(latent_distance(z_ref, phi(prompts, [corrupt(r, frac) for r in refs])))
        assert (s > 0).all()
        means.append(s.mean())
    assert all(a < b for a, b in zip(means, means[1:])), means
    # the other norms are norms too: 0 on identical texts, positive otherwise
    for norm in ("l1", "linf"):
        assert np.asarray(latent_distance(z_ref, z_ref, norm)).max() == 0.0
        assert np.asarray(latent_distance(z_ref, phi(prompts, [corrupt(r, 1.0) for r in refs]),
                                          norm)).min() > 0
    with pytest.raises(ValueError, match="norm="):
        latent_distance(z_ref, z_ref, "l3")


def test_reconstruction_loss_falls_on_bundled_like_data(minilm, tmp_path):
    enc, enc_tok = minilm
    tok = word_tokenizer(VOCAB, TEMPLATE)
    rng = np.random.RandomState(0)
    rows, kinds = [], []
    answers = [" ".join(f"w{j}" for j in rng.randint(4, 16, 5)) for _ in range(3)]
    for i in range(8):  # references and "samples" of 8 prompts, drawn from 3 answers
        prompt = " ".join(f"w{j}" for j in rng.randint(4, 16, 3))
        rows += [(prompt, answers[i % 3]), (prompt, answers[(i + 1) % 3])]
        kinds += ["reference", "sample"]
    guide = build_guide(tiny_decoder(), enc, GuideConfig(latent_dim=16, prefix_len=2,
                                                         encoder_max_len=32), seed=0)
    cfg = GuideTrainConfig(steps=12, batch_size=8, save_every=12, progress=False,
                           optim=OptimConfig(lr=5e-2))
    trained = train_guide(guide, rows, kinds, tok, enc_tok,
                          TokenizeConfig(max_prompt_len=16, max_completion_len=8), cfg, tmp_path)
    import json
    nll = [json.loads(line)["train/nll"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(nll) == 12 and np.mean(nll[-3:]) < 0.9 * np.mean(nll[:3]), nll
    for f in ("curves.png", "latents.png", "export/guide_params.npz"):
        assert (tmp_path / f).is_file(), f
    assert trained is not None


def _pairs(w=None):
    return PairLogps(chosen_logps=jnp.array([-4.0, -7.0, -2.5]),
                     rejected_logps=jnp.array([-5.0, -6.0, -9.0]),
                     ref_chosen_logps=jnp.array([-4.5, -6.0, -3.0]),
                     ref_rejected_logps=jnp.array([-4.0, -6.5, -8.0]),
                     pair_weight=w)


def test_weighted_dpo_is_plain_dpo_with_unit_weights_and_matches_a_hand_computation():
    cfg = PrefConfig(loss="ld_align", beta=0.5)
    plain, _ = preference_loss(_pairs(), PrefConfig(loss="sigmoid", beta=0.5))
    ones, _ = preference_loss(_pairs(jnp.ones(3)), cfg)
    np.testing.assert_allclose(ones, plain, rtol=1e-6)
    w = [0.5, 1.0, 1.5]
    got, _ = preference_loss(_pairs(jnp.array(w)), cfg)
    lc, lr = [-4.0, -7.0, -2.5], [-5.0, -6.0, -9.0]
    rc, rr = [-4.5, -6.0, -3.0], [-4.0, -6.5, -8.0]
    hand = [wi * math.log1p(math.exp(-0.5 * ((a - c) - (b - d))))
            for wi, a, b, c, d in zip(w, lc, lr, rc, rr)]
    np.testing.assert_allclose(got, hand, rtol=1e-5)
    with pytest.raises(ValueError, match="pair_weight"):
        preference_loss(_pairs(), cfg)


def test_weights_carry_no_gradient_and_follow_their_schemes():
    s = jnp.array([0.5, 1.0, 2.0, 4.0])
    sm = latent_weights(s, "softmax", temperature=2.0)
    np.testing.assert_allclose(sm, 4 * np.exp(s / 2.0) / np.exp(s / 2.0).sum(), rtol=1e-6)
    np.testing.assert_allclose(latent_weights(s, "mean_norm"), s / s.mean(), rtol=1e-6)
    np.testing.assert_array_equal(latent_weights(s, "none"), np.ones(4))
    assert (np.diff(np.asarray(sm)) > 0).all()  # increasing in s
    for scheme in ("softmax", "mean_norm"):
        g = jax.grad(lambda d: latent_weights(d, scheme, 1.0).sum() +
                     (latent_weights(d, scheme, 1.0) * d).sum())(s)
        # only the explicit `* d` term differentiates: d/dd Σ w·d = w, nothing through w
        np.testing.assert_allclose(g, latent_weights(s, scheme, 1.0), rtol=1e-6)

    # and through the loss: the gradient w.r.t. the distances of a weighted loss is zero
    def loss_of(d):
        return preference_loss(_pairs(latent_weights(d[:3], "softmax", 1.0)),
                               PrefConfig(loss="ld_align"))[0].sum()
    np.testing.assert_array_equal(jax.grad(loss_of)(s), np.zeros(4))
    with pytest.raises(ValueError, match="weight="):
        latent_weights(s, "rank")


def test_round_bounds_split_the_updates_and_keep_earlier_rounds():
    assert round_bounds(16, 2) == [(0, 8), (8, 16)]
    assert round_bounds(5, 2) == [(0, 3), (3, 5)]
    assert round_bounds(1, 2) == [(0, 1), (1, 1)]  # a round without updates is skipped
    assert round_bounds(2, 2)[0] == round_bounds(1, 2)[0]  # the smoke test's resume
    with pytest.raises(ValueError, match="weight="):
        RoundsConfig(weight="rank")
    with pytest.raises(ValueError, match="norm="):
        RoundsConfig(norm="l3")


def _two_rounds(run_dir, steps, minilm):
    enc, enc_tok = minilm
    tok = word_tokenizer(VOCAB, TEMPLATE)
    policy = tiny_decoder(seed=1)
    guide = build_guide(tiny_decoder(seed=2), enc, GuideConfig(latent_dim=8, prefix_len=1,
                                                               encoder_max_len=24), seed=0)
    records = [{"prompt": p, "reference": r} for p, r in REFERENCES[:4]]
    tcfg = TokenizeConfig(max_prompt_len=8, max_completion_len=10, pad_multiple=8)
    cfg = TrainConfig(steps=steps, batch_size=2, save_every=1, progress=False,
                      optim=OptimConfig(lr=1e-2))
    rcfg = RoundsConfig(rounds=2, weight="softmax", weight_temperature=0.5)
    seen = []

    def held_out(model):
        seen.append(1)
        return {"metrics": {"calls": float(len(seen))}}

    return train_ld_align(policy, records, tok, tcfg, 24, make_loss_fn(PrefConfig(loss="ld_align")),
                          cfg, rcfg, SamplingConfig(max_new_tokens=4, temperature=1.0), run_dir,
                          phi=make_latent_fn(guide, enc_tok, batch_size=4), held_out=held_out)


def test_two_rounds_end_to_end_save_each_round_and_resume_as_uninterrupted(minilm, tmp_path):
    full, evals = _two_rounds(tmp_path / "full", 2, minilm)
    assert sorted(evals) == [0, 1]
    for r in (0, 1):
        d = tmp_path / "full/rounds" / f"round_{r}"
        rows = [json.loads(line) for line in (d / "pairs.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(row["distance"] > 0 for row in rows)
        w = np.array([row["weight"] for row in rows])
        np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-5)
        s = np.array([row["distance"] for row in rows])
        assert (np.argsort(w) == np.argsort(s)).all()  # weights increase with the distance
        assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(np.load(d / "reference.npz"))
        assert (d / "samples.json").is_file() and (d / "eval.json").is_file()
    # killed after round 0, resumed: round 1 is prepared from the restored policy
    _two_rounds(tmp_path / "split", 1, minilm)
    assert not (tmp_path / "split/rounds/round_1").exists()
    resumed, _ = _two_rounds(tmp_path / "split", 2, minilm)
    assert ((tmp_path / "split/rounds/round_1/pairs.jsonl").read_text()
            == (tmp_path / "full/rounds/round_1/pairs.jsonl").read_text())
    a, b = nnx.state(full, LoRAParam), nnx.state(resumed, LoRAParam)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
