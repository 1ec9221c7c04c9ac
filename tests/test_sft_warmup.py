"""The supervised warm-up of the online experiments (`sft.steps=N`): it teaches prompt-dependent
answers (each prompt's own reference, greedily), a finished warm-up is read back rather than
retrained, and records without a reference are refused with the record named."""
import json

import jax
import numpy as np
import pytest
from flax import nnx
from _word_tokenizer import tiny_chat_cfg as tiny_cfg, tiny_chat_tokenizer as tiny_tokenizer

from align_jax.algorithms.refalign_eval import generate_answers
from align_jax.algorithms.sft import SFTConfig, warm_up
from align_jax.errors import ConfigError
from align_jax.models.llama import Decoder
from align_jax.sampling.sampler import SamplingConfig
from align_jax.train.optim import OptimConfig

# Two kinds of prompt, two kinds of answer (the safety job's shape: refuse these, answer those).
RECORDS = [
    {"prompt": "w1 w2", "reference": "no no", "category": "risky"},
    {"prompt": "w1 w3", "reference": "no no", "category": "risky"},
    {"prompt": "w4 w5", "reference": "yes w7 w8", "category": "benign"},
    {"prompt": "w4 w6", "reference": "yes w7 w8", "category": "benign"},
]
CFG = SFTConfig(steps=40, batch_size=4, balance_by="category", save_every=20,
                max_prompt_len=8, max_completion_len=8,
                optim=OptimConfig(lr=1e-2, schedule="constant"))
GREEDY = SamplingConfig(max_new_tokens=4, greedy=True)


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_warm_up_teaches_each_prompt_its_own_reference(tmp_path):
    tok = tiny_tokenizer()
    model = Decoder(tiny_cfg(), rngs=nnx.Rngs(0))
    before = generate_answers(model, tok, RECORDS, GREEDY, batch_size=4)
    assert before != [r["reference"] for r in RECORDS]
    trained = warm_up(model, tok, RECORDS, CFG, tmp_path / "sft", progress=False)
    after = generate_answers(trained, tok, RECORDS, GREEDY, batch_size=4)
    assert [a.strip() for a in after] == [r["reference"] for r in RECORDS]
    # the loop's log: NLL fell
    logged = [json.loads(line) for line in
              (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == CFG.steps
    assert logged[-1]["train/nll"] < 0.2 * logged[0]["train/nll"]


def test_finished_warm_up_is_read_back_not_retrained(tmp_path):
    tok = tiny_tokenizer()
    cfg = SFTConfig(**{**CFG.__dict__, "steps": 6, "save_every": 3})
    first = warm_up(Decoder(tiny_cfg(), rngs=nnx.Rngs(0)), tok, RECORDS, cfg, tmp_path / "sft")
    again = warm_up(Decoder(tiny_cfg(), rngs=nnx.Rngs(0)), tok, RECORDS, cfg, tmp_path / "sft")
    for a, b in zip(_params(first), _params(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()) == 6
    untouched = Decoder(tiny_cfg(), rngs=nnx.Rngs(0))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(_params(first), _params(untouched)))


def test_zero_steps_is_the_identity_and_missing_references_are_named(tmp_path):
    tok = tiny_tokenizer()
    model = Decoder(tiny_cfg(), rngs=nnx.Rngs(0))
    assert warm_up(model, tok, RECORDS, SFTConfig(steps=0), tmp_path / "sft") is model
    bad = RECORDS[:2] + [{"prompt": "w4"}]
    with pytest.raises(ConfigError, match="record 2"):
        warm_up(model, tok, bad, CFG, tmp_path / "sft")
