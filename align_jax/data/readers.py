"""Raw record readers: JSONL, JSON arrays, Parquet, HF `datasets` saved dirs, TFDS, ArrayRecord.

Every reader yields :class:`RawRecord` (where it came from + the decoded Python object, or the
reason it could not be decoded). Readers never validate fields: that is the format adapters' job
(``formats.py``), so a bad record is reported in one place with its location, and skip mode can
count it. Locations are "line N" (1-based) for line-oriented files and "row N" (0-based row
index) for columnar / random-access sources.

Heavy or optional dependencies (pyarrow, tensorflow_datasets, array_record) are imported lazily
so that importing ``align_jax.data`` stays cheap and works without them.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from align_jax.data.schemas import DataError

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
_SHARD_SUFFIXES = _JSONL_SUFFIXES + (".json", ".parquet", ".arrow", ".array_record")


@dataclass(frozen=True)
class RawRecord:
    """One undecoded record. ``error`` is set (and ``data`` is None) if it could not be parsed."""

    source: str
    location: str
    data: Any
    error: str | None = None


def _utf8_error(raw: bytes, e: UnicodeDecodeError) -> tuple[int, int, str]:
    """(line, column, message) of a decoding error in ``raw``; both 1-based, the column counted
    in characters of that line (what an editor shows)."""
    line = raw.count(b"\n", 0, e.start) + 1
    start = raw.rfind(b"\n", 0, e.start) + 1
    col = len(raw[start:e.start].decode("utf-8", "replace")) + 1
    return line, col, f"invalid UTF-8 at column {col} (byte 0x{raw[e.start]:02x})"


def _json_error(e: json.JSONDecodeError, line_text: str | None = None) -> str:
    """The message of a JSON syntax error. For one line, ``colno`` is the 1-based character
    column in it (the line is parsed without its newline, so an error at the end of a
    truncated line is not reported as column 1 of a next line)."""
    where = f"column {e.colno}"
    if line_text is not None and e.pos >= len(line_text):
        where += " (end of line)"
    return f"invalid JSON ({e.msg} at {where})"


def iter_jsonl(path: str | os.PathLike) -> Iterator[RawRecord]:
    """One JSON value per line; blank lines are ignored (but still counted for line numbers).
    Lines are decoded one by one, so invalid UTF-8 is a bad record on its line, not a crash."""
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            loc = f"line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(path, loc, None, _utf8_error(raw, e)[2])
                continue
            if lineno == 1:
                line = line.lstrip("\ufeff")  # a UTF-8 byte-order mark is not data
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                yield RawRecord(path, loc, json.loads(line))
            except json.JSONDecodeError as e:
                yield RawRecord(path, loc, None, _json_error(e, line))


def _read_text(path: str) -> str:
    """A whole file as text; invalid UTF-8 is a DataError naming its line and column."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        line, _, msg = _utf8_error(raw, e)
        raise DataError(msg, source=path, location=f"line {line}") from None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _array_elements(text: str) -> Iterator[tuple[int, Any]]:
    """(start offset, value) of each element of the JSON array ``text``, parsed one element at
    a time so each record knows the line it starts on. Syntax errors raise JSONDecodeError
    with positions in the whole text."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, _skip_ws(text, 0) + 1)  # past "["
    if i < len(text) and text[i] == "]":
        end = _skip_ws(text, i + 1)
    else:
        while True:
            value, end = dec.raw_decode(text, i)
            yield i, value
            i = _skip_ws(text, end)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
                continue
            if i < len(text) and text[i] == "]":
                end = _skip_ws(text, i + 1)
                break
            raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, i)
    if end < len(text):
        raise json.JSONDecodeError("Extra data", text, end)


def iter_json_array(path: str | os.PathLike) -> Iterator[RawRecord]:
    """A ``.json`` file holding one array of records (or JSONL mis-named ``.json``). Records
    are located as "line L (row i)": the line the element starts on, and its index."""
    path = str(path)
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            # Many datasets ship JSON Lines under a .json name; fall back to line mode.
            yield from iter_jsonl(path)
            return
        raise DataError(f"expected a JSON array of records, got {type(value).__name__}",
                        source=path)
    try:
        for row, (start, item) in enumerate(_array_elements(text)):
            yield RawRecord(path, f"line {text.count(chr(10), 0, start) + 1} (row {row})", item)
    except json.JSONDecodeError as e:
        # a broken array cannot be resynchronised: the whole file is reported, not one record
        raise DataError(_json_error(e), source=path, location=f"line {e.lineno}") from None


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:  # pragma: no cover - pyarrow is a project dependency
        raise ImportError("reading Parquet/Arrow data needs `pip install pyarrow`") from e
    import pyarrow.ipc
    import pyarrow.parquet

    return pyarrow


def iter_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> Iterator[RawRecord]:
    """Rows of a Parquet file, read in record batches so large files are not loaded at once."""
    pa = _pyarrow()
    path = str(path)
    row = 0
    for batch in pa.parquet.ParquetFile(path).iter_batches(batch_size=1024, columns=columns):
        for item in batch.to_pylist():
            yield RawRecord(path, f"row {row}", item)
            row += 1


def _iter_arrow_table_file(path: str) -> Iterator[tuple[int, dict]]:
    """Rows of one Arrow IPC file: HF `datasets` writes the *stream* format, others the file one."""
    pa = _pyarrow()
    with pa.memory_map(path, "r") as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        row = 0
        for batch in batches:
            for item in batch.to_pylist():
                yield row, item
                row += 1


def iter_arrow(path: str | os.PathLike) -> Iterator[RawRecord]:
    path = str(path)
    for row, item in _iter_arrow_table_file(path):
        yield RawRecord(path, f"row {row}", item)


def is_hf_saved_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def iter_hf_disk(path: str | os.PathLike, split: str | None = None) -> Iterator[RawRecord]:
    """A directory written by ``datasets.Dataset(Dict).save_to_disk`` — without `datasets`.

    Layout: ``state.json`` lists the ``*.arrow`` shards (Arrow IPC streams) in order;
    ``dataset_info.json`` holds the features. A ``DatasetDict`` adds ``dataset_dict.json`` with
    the split names, one sub-directory per split. ``save_to_disk`` flattens any index mapping, so
    the shards are the rows in order. Row numbers count across shards (0-based).
    """
    root = Path(path)
    if (root / "dataset_dict.json").is_file():
        with open(root / "dataset_dict.json", encoding="utf-8") as f:
            splits = json.load(f).get("splits", [])
        if split is None:
            if len(splits) != 1:
                raise DataError(f"holds splits {splits}; pass split=<name>", source=str(root))
            split = splits[0]
        if split not in splits:
            raise DataError(f"has no split {split!r} (splits: {splits})", source=str(root))
        root = root / split
    state_path = root / "state.json"
    if not state_path.is_file():
        raise DataError("not a `datasets` save_to_disk directory (no state.json)", source=str(root))
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    files = [root / entry["filename"] for entry in state.get("_data_files", [])]
    if not files:  # older layouts: fall back to every shard in name order
        files = sorted(root.glob("*.arrow"))
    row = 0
    for file in files:
        for _, item in _iter_arrow_table_file(str(file)):
            # Global row index (what `ds[row]` would return) plus the shard it lives in.
            yield RawRecord(str(root), f"row {row} (in {file.name})", item)
            row += 1


def _to_python(value: Any) -> Any:
    """TFDS/ArrayRecord values → plain Python: bytes → str, numpy arrays/scalars → lists/numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and numpy scalars
    if tolist is not None:
        return _to_python(tolist())
    return value


def iter_tfds(
    name: str, split: str | None = None, data_dir: str | None = None
) -> Iterator[RawRecord]:
    """A prepared TFDS dataset through ``tfds.data_source`` (ArrayRecord, no TensorFlow needed).

    ``download=False``: this project never fetches data at run time; prepare the dataset first
    (``tfds build``) or point ``data_dir`` at a prepared copy.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "reading TFDS datasets needs `pip install tensorflow-datasets array-record` "
            "(TensorFlow itself is not required: tfds.data_source reads ArrayRecord files)"
        ) from e
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    label = f"tfds:{name}" + (f"[{split}]" if split else "")
    for i in range(len(source)):
        yield RawRecord(label, f"row {i}", _to_python(source[i]))


def iter_array_record(path: str | os.PathLike) -> Iterator[RawRecord]:
    """An ArrayRecord file whose records are UTF-8 JSON objects (one record per example)."""
    try:
        from array_record.python.array_record_data_source import ArrayRecordDataSource
    except ImportError as e:
        raise ImportError("reading .array_record files needs `pip install array-record`") from e
    path = str(path)
    source = ArrayRecordDataSource([path])
    for i in range(len(source)):
        loc = f"row {i}"
        try:
            yield RawRecord(path, loc, json.loads(bytes(source[i]).decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            yield RawRecord(path, loc, None, f"expected a UTF-8 JSON record ({e})")


def _iter_file(path: str, columns: list[str] | None) -> Iterator[RawRecord]:
    if path.endswith(_JSONL_SUFFIXES):
        return iter_jsonl(path)
    if path.endswith(".json"):
        return iter_json_array(path)
    if path.endswith(".parquet"):
        return iter_parquet(path, columns)
    if path.endswith(".arrow"):
        return iter_arrow(path)
    if path.endswith(".array_record"):
        return iter_array_record(path)
    raise DataError(
        "unknown file type; expected one of " + ", ".join(_SHARD_SUFFIXES), source=path
    )


def iter_records(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    columns: list[str] | None = None,
) -> Iterator[RawRecord]:
    """Dispatch on what ``source`` is.

    - ``"tfds:<name>"`` → TFDS data source (``split``, ``data_dir``);
    - a ``save_to_disk`` directory → HF arrow shards (``split`` for a DatasetDict);
    - any other directory → every data file in it, in sorted order (sharded JSONL/Parquet);
    - a glob pattern → every match, sorted;
    - a file → by suffix (.jsonl/.jsonl.gz/.ndjson, .json, .parquet, .arrow, .array_record).
    """
    src = str(source)
    if src.startswith("tfds:"):
        yield from iter_tfds(src[len("tfds:"):], split=split, data_dir=data_dir)
        return
    if any(ch in src for ch in "*?["):
        paths = sorted(glob.glob(src))
        if not paths:
            raise DataError("glob pattern matched no files", source=src)
    elif os.path.isdir(src):
        if is_hf_saved_dir(src):
            yield from iter_hf_disk(src, split=split)
            return
        paths = sorted(str(p) for p in Path(src).iterdir() if str(p).endswith(_SHARD_SUFFIXES))
        if not paths:
            raise DataError("directory holds no data files", source=src)
    elif os.path.isfile(src):
        paths = [src]
    else:
        raise DataError("no such file or directory", source=src)
    for path in paths:
        yield from _iter_file(path, columns)
