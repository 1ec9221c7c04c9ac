"""`key=value` overrides for the typed (dataclass) configs of experiment files.

    cfg = parse_overrides(Config(), sys.argv[1:])

Values are converted by the field's annotation (int, float, bool, str, tuple[...], Optional[...]);
nested dataclasses are reached with dots (`sampling.top_p=0.9`). Unknown keys and unparsable
values are errors that name the key and the expected type, so a typo never runs silently.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Callable

from align_jax.errors import ConfigError, UserError


def _convert(raw: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(raw, a, key)
            except ValueError:
                pass
        raise ValueError(f"{key}={raw!r}: expected one of {args}")
    if typ is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={raw!r}: expected a bool (true/false)")
    if typ in (int, float, str):
        try:
            return typ(raw)
        except ValueError:
            raise ValueError(f"{key}={raw!r}: expected {typ.__name__}") from None
    if origin in (tuple, list):
        text = raw.strip()
        if text.startswith("["):
            items = json.loads(text)
        else:
            items = [p for p in text.split(",") if p.strip() != ""]
        elem = args[0] if args else str
        conv = [_convert(str(i).strip(), elem, key) for i in items]
        return tuple(conv) if origin is tuple else conv
    if typ is Any:
        return raw
    raise ValueError(f"{key}: cannot parse values of type {typ}")


def parse_overrides(cfg, argv: list[str]):
    """Return a copy of dataclass `cfg` with `key=value` items of argv applied."""
    for item in argv:
        if "=" not in item:
            raise ConfigError(f"argument {item!r}: expected key=value (see the config dataclass)")
        key, raw = item.split("=", 1)
        cfg = _set(cfg, key.strip().split("."), raw, key)
    return cfg


def _set(obj, path: list[str], raw: str, full_key: str):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        raise ConfigError(f"unknown config key {full_key!r}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(type(obj))
    cur = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(cur):
            raise ConfigError(f"config key {full_key!r}: {name!r} has no sub-keys")
        return dataclasses.replace(obj, **{name: _set(cur, path[1:], raw, full_key)})
    try:
        val = _convert(raw, hints[name], full_key)
    except ValueError as e:
        raise ConfigError(f"bad override: {e}") from None
    return dataclasses.replace(obj, **{name: val})


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def run_main(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> Any:
    """Entry point of every experiment: user errors (`align_jax.errors.UserError`: config, data,
    paths) print ONE line `error: …` and exit 2; internal errors keep their traceback.
    `ALIGN_JAX_DEBUG=1` re-raises user errors with their traceback."""
    import os
    import sys

    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("ALIGN_JAX_DEBUG") == "1":
            raise
        msg = str(e) if isinstance(e, UserError) else f"no such file: {e.filename or e}"
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
