"""Reading the rows of a data source, each with its origin: `file:line` (1-based) or `file row N`.

A row is handed on as a dict, or as an error (a line that is not JSON, not UTF-8, not an object)
that the loader names and counts under `data.on_bad_row` like any other bad row. A source that
cannot be read at all (missing, truncated, not JSON) is a one-line `DataError` naming the file.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from preftune.data.errors import UNDECODABLE, WRONG_TYPE, BadRow, DataError


@dataclass
class RawRow:
    origin: str
    data: dict | None
    error: BadRow | None = None


def describe_source(source: Any) -> str:
    """A short name for a data source, for messages (never the data itself)."""
    if isinstance(source, list):
        return f"in-memory rows ({len(source)})"
    if hasattr(source, "column_names"):
        return f"datasets.Dataset ({len(source)} rows)"
    return str(source)


def read_rows(source: Any, split: str = "train") -> Iterator[RawRow]:
    """Yield the rows of a .jsonl/.jsonl.gz/.json/.parquet file, a `datasets` directory saved with
    save_to_disk, a `datasets.Dataset`, a list of dicts, or "hf:owner/name" (hub, needs network).
    Row numbers in origins are 1-based, like line numbers."""
    if isinstance(source, list) or (hasattr(source, "column_names") and hasattr(source, "__getitem__")):
        for i, row in enumerate(source, start=1):
            yield _as_raw(f"row {i}", row)
        return
    source = str(source)
    if source.startswith("hf:"):
        yield from read_rows(_load_hub_dataset(source[3:], split), split)
        return
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory")
    if path.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{source}: no split {split!r}; splits: {', '.join(loaded)}")
            loaded = loaded[split]
        for i, row in enumerate(loaded, start=1):
            yield _as_raw(f"{path.name} row {i}", row)
        return
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        yield from _read_jsonl(path)
    elif name.endswith((".json", ".json.gz")):
        yield from _read_json(path)
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: cannot be read as parquet: {error}") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield _as_raw(f"{name} row {i}", row)
    else:
        raise DataError(f"{path}: unknown data format; use .jsonl, .jsonl.gz, .json, .parquet or a "
                        f"datasets directory")


def _load_hub_dataset(name: str, split: str):
    """A hub dataset, failing at once with one line when the hub cannot be reached."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except (OSError, ConnectionError, ValueError) as error:  # offline, unknown repo, no such split
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"hf:{name}: cannot be loaded from the Hugging Face hub ({first}); without network, "
                        "save it with datasets' save_to_disk or as .jsonl and set data.source to that path") from None


def _as_raw(origin: str, row: Any) -> RawRow:
    if not isinstance(row, dict):
        return RawRow(origin, None, BadRow(f"row is not an object but {type(row).__name__}", category=WRONG_TYPE))
    return RawRow(origin, row)


def _decode_line(raw: bytes, origin: str, first: bool) -> RawRow:
    if first and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return RawRow(origin, None, BadRow(f"undecodable line: not UTF-8 ({error.reason} at byte {error.start + 1})",
                                           category=UNDECODABLE))
    try:
        return _as_raw(origin, json.loads(text))
    except json.JSONDecodeError as error:  # colno is 1-based and counts characters, as editors do
        return RawRow(origin, None, BadRow(f"undecodable line: invalid JSON ({error.msg} at column {error.colno})",
                                           category=UNDECODABLE))


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    opener = gzip.open if path.name.endswith(".gz") else open
    last_good = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield _decode_line(raw, f"{path.name}:{number}", number == 1)
                last_good = number
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: the gzip data is truncated or damaged after line {last_good} (the last line "
                        f"read whole): {error}") from None


def _read_json(path: Path) -> Iterator[RawRow]:
    """A .json file holding a list of objects, each row named by the line it starts on.

    A file holding one object per line (JSON Lines named .json) is read as such. Invalid UTF-8
    inside a row makes that row bad (its strings cannot be tokenised), not the whole file.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: the gzip data is truncated or damaged: {error}") from None
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    damaged = _UNDECODED.search(text) is not None
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "{":
        yield from _read_jsonl(path)
        return
    if text[start:start + 1] != "[":
        raise DataError(f"{path}: a .json data file must hold a list of objects (or one object per line)")
    decoder, position, line = json.JSONDecoder(), start + 1, text.count("\n", 0, start) + 1
    while True:
        skipped = _skip_space(text, position)
        line += text.count("\n", position, skipped)
        position = skipped
        if text[position:position + 1] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: cannot be decoded as JSON ({error.msg} at column "
                            f"{error.colno})") from None
        origin = f"{path.name}:{line}"
        yield (RawRow(origin, None, BadRow("undecodable row: not UTF-8", category=UNDECODABLE))
               if damaged and _has_undecodable(row) else _as_raw(origin, row))
        line += text.count("\n", position, end)
        position = _skip_space(text, end)
        line += text.count("\n", end, position)
        if text[position:position + 1] == ",":
            position += 1
        elif text[position:position + 1] != "]":
            lineno = text.count("\n", 0, position) + 1
            raise DataError(f"{path}:{lineno}: cannot be decoded as JSON (expecting ',' or ']' between rows)")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by errors="surrogateescape"


def _has_undecodable(value: Any) -> bool:
    """Whether a decoded JSON value holds bytes that were not UTF-8."""
    if isinstance(value, str):
        return _UNDECODED.search(value) is not None
    if isinstance(value, dict):
        return any(_has_undecodable(k) or _has_undecodable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_undecodable(v) for v in value)
    return False
