"""One process of tests/test_multiprocess.py:
`python _multiprocess_worker.py MODE OUT PID NPROC PORT [RUN_DIR]` (NPROC=1: the single-process
reference on all 8 CPU devices; NPROC=2: 4 devices each, CPU collectives over gloo). Each process
writes what it got back to OUT.<PID>.json.

MODE:
- train: a tiny Llama trains 3 steps on a (data 4, fsdp 2) mesh, each process feeding ITS share
  of the global batch (DataLoader process slices + make_array_from_process_local_data).
- sample: 8 prompts, 4 per process (process 1's longer, so the hosts must agree on one padded
  width), sampled at temperature 1 by the jitted sampler; each process reports its texts.
- score: BERTScore (bundled MiniLM) and a tiny decoder reward model on a DIFFERENT number of
  pairs per process (5 and 2 / 5 and 3): the hosts must agree on batch counts and lengths.
- save: the train run under a TrainingSession in RUN_DIR, checkpointing each step; after step 2
  it prints SAVED and waits to be killed (SIGKILL, both processes).
- resume: the same run restarted: restores step 2 (state + loader position), trains step 3.
"""
import json
import os
import sys
import time

mode, out, pid, nproc, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
run_dir = sys.argv[6] if len(sys.argv) > 6 else None
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"
os.environ["JAX_PLATFORMS"] = "cpu"

if nproc > 1:  # the environment a multi-host launch gives every process (launch.sh, README)
    os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(nproc),
                      JAX_PROCESS_ID=str(pid))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from align_jax.sharding import make_mesh, maybe_initialize_distributed  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# the experiments' own initialisation (align_jax.experiment calls it before building the mesh)
assert maybe_initialize_distributed() == (nproc > 1)

assert jax.device_count() == 8 and jax.process_count() == nproc
mesh = make_mesh("4,2,1")  # data 4 x fsdp 2: batch split 8 ways, weights 2 ways


def mine(rows: list, split: tuple[int, ...]) -> list:
    """This process's share of ``rows`` (all of them with one process): shares of sizes split."""
    if nproc == 1:
        return list(rows)
    start = sum(split[:pid])
    return list(rows[start:start + split[pid]])


def train(steps: int, session_dir=None, stop_after: int | None = None) -> dict:
    from align_jax.data.loader import DataLoader
    from align_jax.models.config import DecoderConfig
    from align_jax.models.llama import Decoder
    from align_jax.sharding import place_batch
    from align_jax.train.optim import OptimConfig
    from align_jax.train.session import TrainingSession
    from align_jax.train.state import create_train_state
    from align_jax.train.step import lm_loss_fn, make_train_step

    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, pad_token_id=0, eos_token_id=1)
    opt = OptimConfig(lr=1e-2, schedule="constant").make(steps)
    state, bundle = create_train_state(Decoder(cfg, rngs=nnx.Rngs(0)), opt, 0, mesh)
    step_fn = make_train_step(lm_loss_fn(), opt, bundle, mesh)
    rng = np.random.default_rng(0)
    examples = [rng.integers(2, 64, 12).astype(np.int32) for _ in range(16)]

    def collate(rows):
        ids = np.stack(rows)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "loss_mask": np.ones_like(ids)}

    loader = DataLoader(examples, 8, seed=0, collate_fn=collate)  # 2 batches an epoch
    session = TrainingSession(session_dir, save_every=1, keep=3) if session_dir else None
    start = 0
    if session is not None:
        state, start = session.resume(state, loader)
    losses, local_rows = {}, None
    for step in range(start, steps):
        batch = next(loader)
        local_rows = len(batch["input_ids"])
        state, m = step_fn(state, place_batch(batch, mesh))
        losses[step + 1] = float(m["loss"][0]) / float(m["loss"][1])
        if session is not None:
            session.end_step(step + 1, {"loss": losses[step + 1]}, state, final=step + 1 == steps)
        if stop_after is not None and step + 1 == stop_after:
            session.ckpt.wait()
            print("SAVED", flush=True)
            time.sleep(600)  # killed here by the test
    if session is not None:
        session.close()
    checksum = float(sum(np.abs(np.asarray(jax.experimental.multihost_utils.process_allgather(
        x, tiled=True))).sum() for x in jax.tree.leaves(state.params)))
    return {"losses": losses, "checksum": checksum, "local_rows": local_rows, "start": start}


def sample() -> dict:
    sys.path.insert(0, os.path.dirname(__file__))
    from _word_tokenizer import tiny_chat_cfg, tiny_chat_tokenizer

    from align_jax.models.llama import Decoder
    from align_jax.sampling.sampler import SamplingConfig, sample_texts

    tok = tiny_chat_tokenizer()
    model = Decoder(tiny_chat_cfg(), rngs=nnx.Rngs(1))
    prompts = [" ".join(f"w{(i + j) % 12}" for j in range(n))
               for i, n in enumerate((1, 2, 1, 3, 9, 11, 10, 12))]
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, prompt_bucket=4)
    texts, got = sample_texts(model, tok, mine(prompts, (4, 4)), jax.random.key(3), cfg,
                              mesh=mesh)
    return {"prompts": mine(prompts, (4, 4)), "texts": texts,
            "tokens": np.asarray(got.tokens).tolist(), "width": int(got.prompt_ids.shape[1])}


def score() -> dict:
    sys.path.insert(0, os.path.dirname(__file__))
    from _word_tokenizer import tiny_chat_cfg, tiny_chat_tokenizer

    from align_jax.models.llama import Decoder
    from align_jax.models.score_head import ScoredDecoder
    from align_jax.rewards.reward_model import DecoderRewardModel
    from align_jax.rewards.similarity import make_similarity

    cands = ["The cat sat on the mat.", "Paris is the capital of France.", "I do not know.",
             "Water boils at one hundred degrees Celsius at sea level, as every cook knows.",
             "Two plus two is four.", "A long answer " * 12, "Yes."]
    refs = ["A cat was sitting on a mat.", "The capital of France is Paris.",
            "The capital of France is Paris.", "Water boils at 100 C.", "4", "A short one.",
            "Yes."]
    bert = make_similarity("bertscore_f1", mesh=mesh, batch_size=4)
    f1 = bert(mine(cands, (5, 2)), mine(refs, (5, 2)))
    # a second call: the references now come from the cache, the agreement must still hold
    f1_again = bert(mine(cands, (5, 2)), mine(refs, (5, 2)))
    tok = tiny_chat_tokenizer()
    rm = DecoderRewardModel(ScoredDecoder(Decoder(tiny_chat_cfg(), rngs=nnx.Rngs(2)),
                                          pad_token_id=0, rngs=nnx.Rngs(3)),
                            tok, batch_size=8, mesh=mesh, progress=False)
    rng = np.random.default_rng(5)
    seqs = [rng.integers(2, 18, n).tolist() for n in (3, 17, 5, 9, 2, 33, 4, 8)]
    rm_scores = rm.score_ids(mine(seqs, (5, 3)))
    return {"f1": np.asarray(f1).tolist(), "f1_again": np.asarray(f1_again).tolist(),
            "rm": np.asarray(rm_scores).reshape(-1).tolist()}


if mode == "train":
    result = train(3)
elif mode == "save":
    result = train(3, run_dir, stop_after=2)
elif mode == "resume":
    result = train(3, run_dir)
elif mode == "sample":
    result = sample()
elif mode == "score":
    result = score()
else:
    raise SystemExit(f"unknown mode {mode}")
with open(f"{out}.{pid}.json", "w") as f:
    json.dump(result, f)
if nproc > 1:
    jax.distributed.shutdown()
