"""`python -m align_jax.aot`: every program of an experiment compiles for a TPU slice on this
CPU-only machine (libtpu's compile-only devices), with per-chip memory that follows the sharding
(fsdp over 4 chips holds a quarter of what data parallelism replicates), on one slice and on two
(multi-slice: data parallelism across them), and a run that cannot fit exits with the one-line
"does not fit" message and the knobs that help."""
import json
import re
import subprocess
import sys

import pytest

from _experiment_files import REPO, user_env

pytest.importorskip("libtpu", reason="libtpu is in requirements-dev.txt (CI installs it)")


def aot(*args, expect=0):
    res = subprocess.run([sys.executable, "-m", "align_jax.aot", *args], cwd=REPO,
                         env=user_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == expect, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def rows(out: str) -> dict[str, list[float]]:
    """program -> [arg, out, temp, peak] GiB per chip."""
    got = {}
    for line in out.splitlines():
        m = re.match(r"^(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+\d+%", line)
        if m:
            got[m.group(1).strip()] = [float(m.group(i)) for i in range(2, 6)]
    return got


def test_every_refalign_program_compiles_and_fsdp_divides_the_weights():
    four = rows(aot("refalign_safety", "preset=tiny_refalign", "topology=v5p:2x2x1").stdout)
    names = " | ".join(four)
    for part in ("train step", "reference log-probs", "sampler prefill", "sampler decode",
                 "BERTScore encoder"):
        assert part in names, names
    one = rows(aot("refalign_safety", "preset=tiny_refalign", "topology=v5p:2x2x1",
                   "mesh=4,1,1").stdout)  # data-parallel only: every chip holds all weights
    train4 = next(v for k, v in four.items() if k.startswith("train step"))
    train1 = next(v for k, v in one.items() if k.startswith("train step"))  # replicated
    # params + Adam moments (the step's arguments): sharded 4 ways over fsdp
    assert train1[0] == pytest.approx(4 * train4[0], rel=0.05)


def _two_layer_config(tmp_path) -> str:
    """An HF config.json of a 2-layer Llama: the programs compile in seconds."""
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"model_type": "llama", "vocab_size": 512, "hidden_size": 64,
                             "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2,
                             "max_position_embeddings": 256, "eos_token_id": 2,
                             "pad_token_id": 0}))
    return str(f)


def test_alarm_programs_compile_on_two_slices(tmp_path):
    cfg = _two_layer_config(tmp_path)
    res = aot("alarm", "preset=tiny_alarm", "topology=v5e:2x2", "slices=2", f"model={cfg}",
              f"reward_model={cfg}")
    assert "v5e:2x2 x 2 slices: 8 chips" in res.stdout
    assert "'data': 2, 'fsdp': 4" in res.stdout  # data parallel across the slices
    names = " | ".join(rows(res.stdout))
    for part in ("token-level PPO-clip", "reference log-probs", "sampler prefill",
                 "sampler decode", "reward model forward"):
        assert part in names, names


def test_ld_align_programs_compile_with_the_guide(tmp_path):
    got = rows(aot("ld_align", "preset=tiny_ld_align", "topology=v5e:2x2",
                   f"model={_two_layer_config(tmp_path)}").stdout)
    names = " | ".join(got)
    for part in ("train step (ld_align", "reference log-probs", "sampler decode",
                 "guide encoder phi", "guide reconstruction step"):
        assert part in names, names


def test_a_run_that_cannot_fit_says_so_in_one_line():
    res = aot("dpo", "preset=tiny_dpo", "topology=v5e:2x2", "rows=512", "prompt_len=1024",
              "gen_len=1024", expect=1)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("does not fit: ") and "v5e:2x2" in last and "remat=true" in last


def test_unknown_preset_and_knob_are_user_errors():
    res = aot("dpo", "preset=nope", expect=2)
    assert "preset=nope: unknown" in res.stderr
    res = aot("dpo", "preset=tiny_dpo", "lr=3", expect=2)
    assert "lr=3: not an aot knob" in res.stderr
