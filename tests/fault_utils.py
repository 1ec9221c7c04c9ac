"""Shared pieces of the fault-injection tests: a tiny random Llama saved as a HF checkpoint dir
(weights + a word-level tokenizer + a pairs JSONL), and experiments run as subprocesses the way
a user runs them (`python experiments/dpo.py key=value ...`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WORDS = [f"q{i}" for i in range(16)] + [f"g{i}" for i in range(8)] + [f"b{i}" for i in range(8)]
VOCAB = {"[PAD]": 0, "[UNK]": 1, "</s>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
MAX_POSITIONS = 128
# Only a hang should fail these tests: on a shared 2-core machine a niced subprocess can be 30x
# slower than alone (a tiny run then takes minutes), so no test asserts a wall time.
HANG = 1800.0

# A subprocess sees ONE CPU device (the tests' 8 simulated devices would make mesh=-1,1,1 an
# 8-way data axis) and XLA's no-optimisation CPU build (train_step.FAST_COMPILE as flags: ~2x
# faster start-up on tiny shapes; deterministic, so runs stay bit-comparable with each other).
SUBPROCESS_ENV = {"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                  "XLA_FLAGS": "--xla_backend_optimization_level=0 "
                               "--xla_cpu_use_fusion_emitters=false"}


def experiment_module(name: str):
    """experiments/<name>.py as a module (its Config, main, ...)."""
    import importlib.util

    key = f"experiments_{name}"
    if key not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(key, REPO / "experiments" / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="[PAD]",
                                   unk_token="[UNK]", bos_token="<s>")


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts of q-words; chosen answers g-words, rejected ones b-words (learnable)."""
    r = np.random.default_rng(seed)

    def words(p, k):
        return " ".join(f"{p}{j}" for j in r.integers(0, 16 if p == "q" else 8, k))

    return [{"prompt": words("q", 2), "chosen": words("g", int(r.integers(1, 6))),
             "rejected": words("b", int(r.integers(1, 6)))} for _ in range(n)]


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> Path:
    """A HF checkpoint dir of a 2-layer, 32-wide random Llama with its tokenizer, plus
    ``pairs.jsonl`` (24 pairs) next to it."""
    import torch
    import transformers

    d = tmp_path_factory.mktemp("tiny_policy")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                                   eos_token_id=2, bos_token_id=3, pad_token_id=0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    write_jsonl(d / "pairs.jsonl", pair_rows(24))
    return d


def dpo_args(policy: Path, out_dir: Path, cache_dir: Path, **over) -> list[str]:
    """A tiny DPO run: 22 training pairs / 2 held out, batches of 4, one shape for all."""
    args = dict(model=policy, data=policy / "pairs.jsonl", max_prompt_len=4, max_completion_len=8,
                pad_multiple=16, batch_size=4, cache_dir=cache_dir, out_dir=out_dir, steps=6,
                save_every=2)
    args.update(over)
    return [f"{k}={v}" for k, v in args.items()]


def start(script: str, args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, **SUBPROCESS_ENV, **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, str(REPO / "experiments" / script), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def run(script: str, args: list[str], timeout: float = HANG,
        **kw) -> subprocess.CompletedProcess:
    p = start(script, args, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()  # leave no orphan behind
        p.communicate()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one `error:` line on stderr, no traceback; returns the line."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = error_lines(res.stderr)
    assert len(lines) == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if x.strip()]


def restore_flat(ckpt_dir: Path, step: int) -> dict[str, np.ndarray]:
    """A checkpoint's state as {flat key: numpy array}, target shapes taken from its metadata
    (what a user inspecting a run dir would do; no model needed)."""
    import jax
    import orbax.checkpoint as ocp

    from align_jax.train.checkpoint import Checkpointer

    ck = Checkpointer(ckpt_dir)
    try:
        meta = ck.mngr.item_metadata(step)["state"]
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=dev) for k, v in meta.items()}
        out = ck.mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
        return {k: np.asarray(v) for k, v in out["state"].items()}
    finally:
        ck.close()
