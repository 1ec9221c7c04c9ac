"""python -m align_jax.sampling "prompt" ["another prompt" ...] [key=value ...]

Chat with a policy from the terminal: the tokenizer's chat template is applied, the reply is
streamed (decoded every `chunk` tokens from the same jitted decode loop that `generate` runs).
With several prompts or n > 1 the batch runs in one go and every reply is printed at the end.

    python -m align_jax.sampling "What is the capital of France?"
    python -m align_jax.sampling "Tell me a story" max_new_tokens=256 temperature=0.8 top_p=0.95
    python -m align_jax.sampling "Hi" "Bye" greedy=true model=/path/to/hf_dir seed=3

Keys: see `CliConfig` below (model=None is the bundled SmolLM2-135M-Instruct GGUF); the sampler's
are `SamplingConfig`'s (`sampling.top_p=0.9`, or just `top_p=0.9`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import ClassVar

from align_jax.sampling.sampler import SamplingConfig


@dataclasses.dataclass(frozen=True)
class CliConfig:
    # the sampler's knobs are SamplingConfig's, also by their bare names (top_p=0.9)
    SHORT_GROUPS: ClassVar[tuple[str, ...]] = ("sampling",)

    model: str | None = None  # HF dir / cached hub id / .gguf; None = offline default policy
    # layer scan by default here (unroll_layers=False): a one-off prompt is dominated by compile
    # time, and the scan compiles ~4x faster than the per-layer CPU decode path
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=128, temperature=0.7, top_p=0.9,
                                              unroll_layers=False)
    seed: int = 0  # random seed of the sampling key
    chat_template: bool = True  # apply the tokenizer's chat template to each prompt
    chunk: int = 8  # streaming granularity (tokens per decode call)
    mesh: str | None = None  # e.g. "-1,1,1" to shard over all devices


def main(argv: list[str] | None = None) -> int:
    from align_jax.cli import parse_overrides
    from align_jax.errors import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    prompts = [a for a in argv if "=" not in a]
    cfg = parse_overrides(CliConfig(), [a for a in argv if "=" in a])
    if not prompts:
        raise ConfigError('no prompt given: python -m align_jax.sampling "your prompt" [key=value]')

    import jax
    import numpy as np

    from align_jax.models import load_causal_lm
    from align_jax.sampling.sampler import (_pad_lists, decode_responses,
                                            prompt_token_ids, generate, stream_generate,
                                            tokenizer_defaults)
    from align_jax.sharding import make_mesh

    t0 = time.perf_counter()
    model, tok = load_causal_lm(cfg.model)
    if tok is None:
        raise ConfigError(f"{cfg.model}: no tokenizer files next to the weights")
    mesh = make_mesh(cfg.mesh) if cfg.mesh else None
    scfg = tokenizer_defaults(model, tok, cfg.sampling)
    ids, mask = _pad_lists(prompt_token_ids(tok, prompts, cfg.chat_template), scfg.pad_token_id)
    key = jax.random.key(cfg.seed)
    print(f"[loaded in {time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    if len(prompts) == 1 and scfg.n == 1:
        shown, out = "", None
        for out in stream_generate(model, ids, mask, key, scfg, mesh=mesh, chunk=cfg.chunk):
            text = decode_responses(tok, out)[0]
            # a chunk may end inside a multi-byte character: print only settled text
            settled = text.rstrip("\ufffd")
            print(settled[len(shown):], end="", flush=True)
            shown = settled
        print()
    else:
        out = jax.device_get(generate(model, ids, mask, key, scfg, mesh=mesh))
        for r, text in enumerate(decode_responses(tok, out)):
            head = f"--- prompt {r // scfg.n}" + (f", sample {r % scfg.n}" if scfg.n > 1 else "")
            print(f"{head} ---\n{text}")
    n_tok = int(np.sum(out.lengths))
    dt = time.perf_counter() - t0
    print(f"[{n_tok} tokens in {dt:.1f}s incl. compile]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from align_jax.cli import run_main

    sys.exit(run_main(main))
