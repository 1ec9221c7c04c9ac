"""Reward models: decoder sequence-classification scores vs transformers, the scorer API, the
Bradley–Terry loss vs TRL 1.16's own RewardTrainer.compute_loss, and the reward-model experiment
end to end (tiny random model: trains, exports, transformers loads the export and scores the same).

Oracles: transformers' LlamaForSequenceClassification / Qwen2ForSequenceClassification on the
same random weights (GenericForSequenceClassification.forward picks the rightmost token that is
not ``config.pad_token_id``), and TRL's RewardTrainer.compute_loss
(trl/trainer/reward_trainer.py:778-817) called with a stand-in ``self`` and a stand-in model whose
logits are fixed scores.
"""
from __future__ import annotations

import json
from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from align_jax.losses import RewardLossConfig, RewardPair, get_loss
from align_jax.models.score_head import load_scored_decoder
from align_jax.rewards.reward_model import load_reward_model

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
WORDS = ("[PAD] [UNK] <s> </s> user assistant : what is the sky color blue green it good bad "
         "answer question a an of to and yes no").split()
TEMPLATE = "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"


def _tokenizer(template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]",
                                               unk_token="[UNK]", bos_token="<s>",
                                               eos_token="</s>")
    if template:
        tok.chat_template = TEMPLATE
    return tok


def _save_random_cls(hf_cfg, path, seed=0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(hf_cfg).eval()
    with torch.no_grad():  # norms are ones and biases zeros at init: make them matter
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
            if name == "score.weight":
                p.normal_(0, 1.0)
    model.save_pretrained(path)
    return model


def _hf_scores(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long),
                     attention_mask=torch.tensor(mask, dtype=torch.long)).logits.float().numpy()


CASES = {
    "llama_pad0": transformers.LlamaConfig(**TINY, pad_token_id=0, num_labels=1),
    "qwen2_pad5_2labels": transformers.Qwen2Config(**TINY, pad_token_id=5, num_labels=2),
    "llama_no_pad_id": transformers.LlamaConfig(**TINY, pad_token_id=None, num_labels=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decoder_scores_match_transformers(case, tmp_path):
    hf_cfg = CASES[case]
    hf = _save_random_cls(hf_cfg, tmp_path)
    ours = load_scored_decoder(tmp_path)
    rng = np.random.default_rng(0)
    T, lengths = 9, [9, 5, 7, 3]
    pad = hf_cfg.pad_token_id if hf_cfg.pad_token_id is not None else 0
    ids = rng.integers(6, 97, size=(4, T)).astype(np.int32)
    mask = (np.arange(T)[None] < np.array(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, pad)  # right padding with the pad id
    got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
    if hf_cfg.pad_token_id is None:  # transformers refuses padded batches: one row at a time
        want = np.concatenate([_hf_scores(hf, ids[i:i + 1, :n], mask[i:i + 1, :n])
                               for i, n in enumerate(lengths)])
    else:
        ids[1, lengths[1] - 1] = pad  # a real token equal to the pad id (pad == EOS): skipped
        got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
        want = _hf_scores(hf, ids, mask)
    assert got.shape == (4, hf_cfg.num_labels)
    np.testing.assert_allclose(got, want, atol=1e-4)


PROMPTS = ["what is the sky color", "is it good", "a question", "what color is the sky",
           "yes or no", "the answer"]
RESPONSES = ["blue", "yes it is good and good", "an answer of no", "green", "no", "bad bad bad"]


@pytest.mark.parametrize("template", [True, False])
def test_scorer_api_matches_transformers(template, tmp_path):
    """rm(prompts, responses): chat-template text (or prompt + response), sorted into length
    buckets and batched, scores back in input order; on a 4x2x1 mesh too."""
    hf = _save_random_cls(CASES["llama_pad0"], tmp_path)
    tok = _tokenizer(template)
    tok.save_pretrained(tmp_path)
    if template:
        texts = [tok.apply_chat_template([{"role": "user", "content": p},
                                          {"role": "assistant", "content": r}], tokenize=False)
                 for p, r in zip(PROMPTS, RESPONSES)]
    else:
        texts = [p + r for p, r in zip(PROMPTS, RESPONSES)]
    want = np.array([_hf_scores(hf, [x], [[1] * len(x)])[0, 0]
                     for x in tok(texts)["input_ids"]])
    rm = load_reward_model(tmp_path, batch_size=4)
    got = rm(PROMPTS, RESPONSES)
    assert got.dtype == np.float32 and got.shape == (len(PROMPTS),)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # repeated pairs are scored once and get the same numbers back, in place
    rm.scored_rows = 0
    twice = rm(list(PROMPTS) * 2, list(RESPONSES) * 2)
    np.testing.assert_allclose(twice, np.concatenate([got, got]), atol=1e-6)
    assert rm.scored_rows == len(set(zip(PROMPTS, RESPONSES)))
    if template:
        from align_jax.sharding import make_mesh

        sharded = load_reward_model(tmp_path, batch_size=4, mesh=make_mesh("4,2,1"))
        np.testing.assert_allclose(sharded(PROMPTS, RESPONSES), want, atol=1e-4)


@pytest.mark.parametrize("margin,center", [(False, None), (True, None), (True, 0.01)])
def test_bradley_terry_matches_trl_reward_trainer(margin, center):
    from trl.trainer.reward_trainer import RewardTrainer

    rng = np.random.default_rng(1)
    rc, rr, m = rng.normal(size=6), rng.normal(size=6), rng.uniform(0, 1, 6)
    logits = torch.tensor(np.concatenate([rc, rr])[:, None], dtype=torch.float64,
                          requires_grad=True)
    acc = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
    fake = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=acc,
                           args=SimpleNamespace(center_rewards_coefficient=center),
                           _total_train_tokens=0, _tp_size=1,
                           _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {"input_ids": torch.zeros((12, 3), dtype=torch.long),
              "attention_mask": torch.ones((12, 3), dtype=torch.long)}
    if margin:
        inputs["margin"] = torch.tensor(m, dtype=torch.float64)
    want = RewardTrainer.compute_loss(fake, lambda **kw: SimpleNamespace(logits=logits), inputs)
    want.backward()
    with jax.enable_x64(True):
        fn = get_loss("bradley_terry", "reward_model")
        f = lambda r: fn(RewardPair(r[:6], r[6:], jnp.asarray(m) if margin else None),
                         RewardLossConfig(center))
        (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(
            jnp.asarray(np.concatenate([rc, rr])))
    assert float(loss) == pytest.approx(want.item(), abs=1e-12)
    np.testing.assert_allclose(np.asarray(grad), logits.grad.numpy()[:, 0], atol=1e-12)
    s, n = metrics["rewards/accuracies"]
    assert float(s / n) == pytest.approx(fake._metrics["train"]["accuracy"][0], abs=1e-6)


def test_experiment_trains_and_export_round_trips(tmp_path):
    """experiments/reward_model.py on a tiny random Llama: the BT loss falls on the training
    pairs (they are also the held-out set here), and the exported dir loads in transformers as
    LlamaForSequenceClassification with the same scores as ours and as load_reward_model's."""
    from _experiment_files import REPO, load_module

    torch.manual_seed(0)
    policy_dir = tmp_path / "policy"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(policy_dir)
    _tokenizer().save_pretrained(policy_dir)
    rows = [{"prompt": p, "chosen": "good answer " + r, "rejected": "bad " + r}
            for p, r in zip(PROMPTS, RESPONSES)] * 2
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    exp = load_module(REPO / "experiments" / "reward_model.py")
    out = exp.main([f"model={policy_dir}", f"data={data}", f"eval_data={data}", "steps=6",
                    "batch_size=4", "lr=3e-3", "warmup_steps=0", "mesh=4,1,2", "pad_multiple=8",
                    f"out_dir={tmp_path / 'run'}", "eval_examples=none"])
    assert out["after"]["loss"] < out["before"]["loss"] - 0.05, (out["before"], out["after"])
    assert out["after"]["rewards/accuracies"] >= out["before"]["rewards/accuracies"]

    export = out["export"]
    assert json.loads(open(f"{export}/config.json").read())["architectures"] == [
        "LlamaForSequenceClassification"]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    ours = load_scored_decoder(export)
    tok = transformers.AutoTokenizer.from_pretrained(export)
    enc = tok([tok.apply_chat_template([{"role": "user", "content": p},
                                        {"role": "assistant", "content": r}], tokenize=False)
               for p, r in zip(PROMPTS, RESPONSES)], padding=True, add_special_tokens=False)
    ids, mask = np.asarray(enc["input_ids"]), np.asarray(enc["attention_mask"])
    want = _hf_scores(hf, ids, mask)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask))), want,
                               atol=1e-4)
    np.testing.assert_allclose(load_reward_model(export)(PROMPTS, RESPONSES), want[:, 0],
                               atol=1e-4)


def test_lora_head_trains_with_adapters_and_export_merges(tmp_path):
    """With LoRA the score head is trainable beside the adapters (base frozen), and the export
    folds the adapters in: transformers scores the export as our adapted model does."""
    from flax import nnx

    from align_jax.algorithms.reward_model import add_score_head
    from align_jax.models import load_causal_lm
    from align_jax.models.score_head import save_scored_decoder
    from align_jax.train.state import split_model

    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(tmp_path / "p")
    _tokenizer().save_pretrained(tmp_path / "p")
    policy, tok = load_causal_lm(tmp_path / "p", lora_rank=4)
    model = add_score_head(policy, tok)
    _, params = split_model(model)
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    assert "score" in names and all("lora_" in n or n == "score" for n in names)
    for name, var in vars(model.backbone.layers).items():  # B away from its zero init
        if name.startswith("lora_b_"):
            var.set_value(var.get_value() + 0.05)
    ids = np.array([[4, 9, 11, 7, 0, 0], [5, 6, 8, 10, 12, 13]], np.int32)
    mask = (ids != 0).astype(np.int32)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    out = save_scored_decoder(model, tmp_path / "export")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    np.testing.assert_allclose(_hf_scores(hf, ids, mask), ours, atol=1e-4)


def test_rows_of_one_prompt_share_its_prefix(tmp_path):
    """K answers per prompt: the templated prompt runs once per batch (models.shared_prefix)
    and every score still equals transformers' on the whole text; on a 4x2x1 mesh too. Long
    prompts, so the shared path does less work and is taken; without a mesh one prompt's answers
    straddle two batches (batch 8 = 2.67 groups of 3)."""
    hf = _save_random_cls(CASES["llama_pad0"], tmp_path)
    tok = _tokenizer(True)
    tok.save_pretrained(tmp_path)
    prompts = [" ".join([q] * 8) for q in ("what is the sky color", "is it good a question",
                                           "yes or no the answer", "what color is the sky")]
    answers = ["blue", "green it is", "no", "an answer of yes and no"]
    P = [p for p in prompts for _ in range(3)]
    R = [answers[(i + j) % 4] for i in range(4) for j in range(3)]
    texts = [tok.apply_chat_template([{"role": "user", "content": p},
                                      {"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(P, R)]
    want = np.array([_hf_scores(hf, [x], [[1] * len(x)])[0, 0]
                     for x in tok(texts)["input_ids"]])
    # on 8 data shards a batch's prefix pass has >= 8 rows: only a batch of 16 saves work
    for mesh, batch, shared in ((None, 8, 2), ("4,2,1", 16, 1)):
        from align_jax.sharding import make_mesh

        rm = load_reward_model(tmp_path, batch_size=batch, mesh=mesh and make_mesh(mesh))
        got = rm(P, R)
        assert rm.shared_batches == shared, mesh
        np.testing.assert_allclose(got, want, atol=1e-4)
        plain = rm.score_ids([list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]])
        np.testing.assert_allclose(plain[:, 0], want, atol=1e-4)  # no groups: the plain path
        assert rm.shared_batches == shared
