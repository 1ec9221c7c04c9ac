"""Fault injection, configs (issue 12): settings that train nothing, train backwards or fail late
are refused up front with one line naming the key (exit 2 from a real experiment process for a
few; ConfigError from the same checks for the rest), and internal errors keep their traceback."""

import numpy as np
import pytest
from flax import nnx

from align_jax.algorithms import refalign as ra
from align_jax.algorithms.online_loop import OnlineLoopConfig, train_online
from align_jax.algorithms.preference import TrainConfig, train_preference
from align_jax.train.optim import OptimConfig
from align_jax.cli import parse_overrides, run_main
from align_jax.errors import ConfigError
from align_jax.models.config import DecoderConfig
from align_jax.models.llama import Decoder
from align_jax.sampling.sampler import SamplingConfig, generate
from align_jax.sanity import check_config
from align_jax.sharding import make_mesh
from fault_utils import (assert_one_line_error, dpo_args, experiment_module, run,  # noqa: F401
                         tiny_policy)


def test_steps_0_is_one_line_naming_the_key(tmp_path):
    # it used to surface as "schedule='cosine' needs total_steps" from deep in the optimizer
    res = run("dpo.py", ["steps=0", f"out_dir={tmp_path / 'run'}"])
    assert_one_line_error(res, "error: steps=0: must be >= 1")
    assert "total_steps" not in res.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_refalign_k_1_is_refused_before_loading(tmp_path):
    res = run("refalign_general.py", ["k=1", f"out_dir={tmp_path / 'run'}"])
    assert_one_line_error(res, "error: k=1: must be >= 2 (advantage='mean' compares the K samples")
    assert not (tmp_path / "run").exists()


def test_prompt_plus_response_beyond_the_context_is_refused_before_compiling(tiny_policy,
                                                                             tmp_path):
    # in-process (the same main() the command line runs): the check needs the model's config
    main = experiment_module("dpo").main
    with pytest.raises(ConfigError) as e:
        main(dpo_args(tiny_policy, tmp_path / "run", tmp_path / "cache", max_completion_len=200))
    assert str(e.value) == ("max_prompt_len + max_completion_len: a prompt of 4 tokens + 200 more "
                            "= 204 tokens exceeds the model's context (max_position_embeddings=128)")
    assert not (tmp_path / "cache").exists()  # nothing computed: refused before the reference pass


BAD = [  # (experiment, overrides, the one line's start)
    ("dpo", ["lr=-1"], "lr=-1.0: must be > 0"),
    ("dpo", ["lr=nan"], "lr=nan: must be > 0 and finite"),
    ("dpo", ["batch_size=0"], "batch_size=0: must be >= 1"),
    ("dpo", ["max_nonfinite_steps=0"], "max_nonfinite_steps=0: must be >= 1"),
    ("dpo", ["mesh=2,2"], "mesh=[2, 2]: expected 3 sizes"),
    ("dpo", ["mesh=a,1,1"], "mesh='a,1,1': expected 3 integers"),
    ("listwise", ["steps=-3"], "steps=-3: must be >= 1"),
    ("rpo_hh", ["lr=0"], "lr=0.0: must be > 0"),
    ("refalign_safety", ["temperature=0"], "temperature=0.0: training temperature must be > 0"),
    ("refalign_safety", ["top_p=0"], "top_p=0.0: must be in (0, 1]"),
    ("refalign_safety", ["top_p=1.5"], "top_p=1.5: must be in (0, 1]"),
    ("refalign_safety", ["k=1", "advantage=rloo"], "k=1: must be >= 2 (advantage='rloo'"),
    ("refalign_general", ["method=simpo", "k=1"], "k=1: must be >= 2 (online SimPO"),
    ("refalign_confidence", ["k=1"], "k=1: must be >= 2"),
    ("refalign_confidence", ["max_new_tokens=0"], "max_new_tokens=0: must be >= 1"),
]


@pytest.mark.parametrize("name,over,start", BAD, ids=[f"{n}:{' '.join(o)}" for n, o, _ in BAD])
def test_bad_experiment_config_is_one_named_config_error(name, over, start):
    cfg = parse_overrides(experiment_module(name).Config(), over)
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert str(e.value).startswith(start) and "\n" not in str(e.value), str(e.value)


def test_k_1_is_fine_without_a_group_baseline():
    check_config(ra.RefAlignConfig(k=1, advantage="none"))  # REINFORCE on raw rewards


def test_loops_check_their_own_configs(tmp_path):
    """Used from Python the loops refuse the same settings before building anything."""
    with pytest.raises(ConfigError, match=r"^steps=0: must be >= 1"):
        train_preference(None, None, None, TrainConfig(steps=0), tmp_path)
    kw = dict(rcfg=ra.RefAlignConfig(k=2), optim=OptimConfig(), loop=OnlineLoopConfig(),
              run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^greedy=True: training samples must be random"):
        train_online(None, None, [], None, sampling=SamplingConfig(greedy=True), **kw)
    with pytest.raises(ConfigError, match=r"^lr=-0.1: must be > 0"):
        train_online(None, None, [], None, sampling=SamplingConfig(),
                     **{**kw, "optim": OptimConfig(lr=-0.1)})
    assert not any(tmp_path.iterdir())


def test_mesh_must_divide_the_devices():
    with pytest.raises(ConfigError, match=r"mesh=\[3, 1, 1\] needs 3 devices, have 8"):
        make_mesh("3,1,1")
    with pytest.raises(ConfigError, match=r"8 devices do not divide by the fixed sizes"):
        make_mesh("-1,3,1")


def test_sampler_refuses_a_prompt_plus_new_tokens_beyond_the_context():
    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=32)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    ids = np.ones((2, 5), np.int32)
    with pytest.raises(ConfigError, match=r"^max_new_tokens=28: a prompt of 5 tokens \+ 28 more = "
                                          r"33 tokens exceeds .*max_position_embeddings=32"):
        generate(model, ids, None, np.zeros(2, np.uint32), SamplingConfig(max_new_tokens=28))


def test_user_errors_are_one_line_internal_errors_keep_the_traceback(capsys, monkeypatch):
    def user(argv):
        raise ConfigError("lr=-1.0: must be > 0")

    def internal(argv):
        raise RuntimeError("a bug")

    with pytest.raises(SystemExit) as e:
        run_main(user, [])
    assert e.value.code == 2 and capsys.readouterr().err == "error: lr=-1.0: must be > 0\n"
    with pytest.raises(RuntimeError, match="a bug"):  # not swallowed into one line
        run_main(internal, [])
    monkeypatch.setenv("ALIGN_JAX_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_main(user, [])
