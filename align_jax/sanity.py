"""Config sanity checks: settings that would train nothing, train backwards or fail late are
rejected up front with one line naming the key (:class:`~align_jax.errors.ConfigError`).

ONE table of rules keyed by field name, applied to any config dataclass (experiment configs and
the loops' own TrainConfig / LoopConfig / OptimConfig / RefAlignConfig / training
SamplingConfig), recursing into nested dataclasses with dotted keys. Experiments call
:func:`check_config` right after parsing the command line, before loading anything; the loops
call it again on what they are given (they are also used from Python). The model's context
length is only known after its config is loaded: :func:`check_context` runs then, before any
compile (the sampler calls it for every prompt batch, the preference experiments for
``max_prompt_len + max_completion_len``).
"""

from __future__ import annotations

import dataclasses
import math

from align_jax.errors import ConfigError

# advantage baselines that compare the K samples of a prompt: with k=1 every advantage is 0
_GROUP_BASELINES = ("mean", "rloo", "grpo")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# field -> (is it fine?, what it must be). Only numeric values are checked (None = "off").
RULES = {
    "steps": (lambda v: v >= 1, "must be >= 1 (the number of optimizer updates)"),
    "lr": (lambda v: math.isfinite(v) and v > 0,
           "must be > 0 and finite (a negative lr ascends the loss)"),
    "temperature": (lambda v: v > 0, "training temperature must be > 0 (at 0 the K samples of a "
                                     "prompt are identical, so every advantage is 0)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "max_new_tokens": (lambda v: v >= 1, "must be >= 1"),
    "prompts_per_step": (lambda v: v >= 1, "must be >= 1"),
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "grad_accum": (lambda v: v >= 1, "must be >= 1"),
    "save_every": (lambda v: v >= 1, "must be >= 1"),
    "max_nonfinite_steps": (lambda v: v >= 1, "must be >= 1"),
    "warmup_steps": (lambda v: v >= 0, "must be >= 0"),
    "eval_every": (lambda v: v >= 0, "must be >= 0 (0 = only before and after training)"),
    "max_prompt_len": (lambda v: v >= 1, "must be >= 1"),
    "max_completion_len": (lambda v: v >= 1, "must be >= 1"),
    # by dotted key (checked before the field name): an optional phase may have 0 steps
    "sft.steps": (lambda v: v >= 0, "must be >= 0 (0 = no supervised warm-up)"),
}


def check_config(cfg, prefix: str = "", root=None) -> None:
    """Raise ConfigError for the first field of ``cfg`` (a dataclass) that breaks a rule. Keys are
    named as the user types them (``lr``, the short key of ``optim.lr``; see ``align_jax.cli``)."""
    from align_jax.cli import shown_key

    root = cfg if root is None else root
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            check_config(v, key + ".", root)
        elif (key in RULES or f.name in RULES) and _num(v):
            ok, must = RULES[key] if key in RULES else RULES[f.name]
            if not ok(v):
                raise ConfigError(f"{shown_key(root, key)}={v}: {must}")
    if root is cfg:
        _check_k(cfg)
    if getattr(cfg, "greedy", False):  # a SamplingConfig handed to a training loop
        raise ConfigError(f"{shown_key(root, prefix + 'greedy')}=True: training samples must be "
                          "random (the K samples of a prompt would be identical and every "
                          "advantage 0)")
    mesh = getattr(cfg, "mesh", None)
    if isinstance(mesh, str):  # the device count is checked when the mesh is built
        from align_jax.sharding import MeshConfig

        MeshConfig.parse(mesh)


def _lookup(cfg, key: str):
    """The value a key names in ``cfg``: a field, else the field its short key resolves to."""
    from align_jax.cli import resolve_key

    if key in {f.name for f in dataclasses.fields(cfg)}:
        return getattr(cfg, key)
    path = resolve_key(cfg, key)
    if path == key:
        return None
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_k(cfg) -> None:
    k = _lookup(cfg, "k")
    if not _num(k):
        return
    if k < 1:
        raise ConfigError(f"k={k}: must be >= 1")
    method = _lookup(cfg, "method")
    advantage = _lookup(cfg, "advantage") or "mean"
    if k < 2 and (method == "simpo" or advantage in _GROUP_BASELINES):
        why = ("online SimPO pairs the best and worst of the K samples" if method == "simpo"
               else f"advantage={advantage!r} compares the K samples of a prompt, so with one "
                    "sample every advantage (and gradient) is 0")
        raise ConfigError(f"k={k}: must be >= 2 ({why})")


def check_context(max_positions: int | None, prompt_tokens: int, new_tokens: int,
                  key: str) -> None:
    """Prompt + generated/response tokens must fit the model's context window."""
    if max_positions and prompt_tokens + new_tokens > max_positions:
        raise ConfigError(
            f"{key}: a prompt of {prompt_tokens} tokens + {new_tokens} more = "
            f"{prompt_tokens + new_tokens} tokens exceeds the model's context "
            f"(max_position_embeddings={max_positions})")
