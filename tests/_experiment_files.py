"""The runnable experiment files (`experiments/*.py`), found by glob so that a new one is covered by
every test that iterates over them (the NOT_TRAINING tools have their own); their Config classes
(imported from the file path); the tiny settings and the environment the subprocess tests start
them with."""
import importlib.util
import os
import sys
from pathlib import Path

from align_jax.cli import config_keys

REPO = Path(__file__).resolve().parents[1]
# Experiment files not of the one-run shape checked here, each with its own tests: ap_select trains
# nothing (tests/test_selection.py); ap_compare / ap_selfplay train one run per selector / round
# under their run dir and resume per selector / round (tests/test_ap_experiments.py).
NOT_TRAINING = {"ap_select", "ap_compare", "ap_selfplay"}
EXPERIMENTS = sorted(p for p in REPO.glob("experiments/*.py") if p.stem not in NOT_TRAINING)

# Size knobs set wherever an experiment's Config has them (seconds per run on 2 CPU cores with
# the default SmolLM2 policy); everything else keeps the default the user gets.
TINY = {
    "save_every": 1,
    "prompts_per_step": 1, "max_new_tokens": 4, "eval_prompts": 2, "eval_max_new_tokens": 4,
    "max_examples": 4, "eval_examples": 2, "batch_size": 2, "ref_batch_size": 2,
    "group_size": 2,  # RPO: must divide batch_size
    "sft.steps": 1, "sft.batch_size": 2,  # the online experiments' supervised warm-up
    "rm_steps": 1, "select_prompts": 2,  # ALaRM: the on-the-fly reward model, its sample set
    "guide_steps": 1,  # LD-Align: guide auto-encoder updates
}


def load_module(path: Path):
    name = f"_experiment_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up while the class is built
        spec.loader.exec_module(mod)
    return sys.modules[name]


def tiny_args(path: Path, steps: int) -> list[str]:
    """`steps=N` plus the TINY knobs this experiment's Config has."""
    keys = config_keys(load_module(path).Config())  # dotted and short keys
    assert "steps" in keys, f"{path.name}: its Config needs a `steps` knob for the smoke test"
    return [f"steps={steps}"] + [f"{k}={v}" for k, v in TINY.items() if k in keys]


def user_env(**extra) -> dict:
    """The environment a user's shell has: without the test session's 8 simulated devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env
