"""Reading preference data and turning each row into an `Example`, with row-level validation.

Accepted conventions (the Hugging Face ones):
- pairwise, explicit prompt: {"prompt", "chosen", "rejected"}
- pairwise, implicit prompt: {"chosen", "rejected"} holding whole dialogues that share every turn
  but the last reply (HH-RLHF); the prompt is their common prefix, cut at a turn boundary
- pointwise (KTO): {"prompt", "completion", "label"}
- demonstrations (SFT): {"prompt", "completion"} or {"messages"}
- listwise: {"prompt", "responses", "scores"}
Each text field is either plain text or a list of chat messages {"role", "content"}.

Every bad row is reported with its origin (file and line, or row number), the field and the
reason. `on_bad_row="error"` stops at the first one; `"skip"` drops it and counts the reason.
"""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

Message = dict[str, str]
Text = Union[str, list[Message]]
KINDS = ("pairwise", "pointwise", "sft", "listwise")


class DataError(ValueError):
    """A bad row under `on_bad_row: error`, or a source that cannot be read at all."""


# The countable kinds of bad row, as they appear in the run summary.
MISSING, WRONG_TYPE, EMPTY, IDENTICAL, UNDECODABLE, INCONSISTENT = (
    "missing field", "wrong type", "empty text", "chosen == rejected", "undecodable line", "inconsistent row")


class BadRow(ValueError):
    """Raised inside row conversion; carries the field (so the message can name it) and the
    category under which a skipped row is counted."""

    def __init__(self, reason: str, field_name: str | None = None, category: str = INCONSISTENT):
        super().__init__(reason)
        self.reason, self.field, self.category = reason, field_name, category

    def describe(self) -> str:
        return f"field '{self.field}': {self.reason}" if self.field else self.reason


@dataclass
class Example:
    """One normalised row. For pairwise data `responses` is [chosen, rejected]."""

    prompt: Text
    responses: list[Text]
    kind: str
    label: bool | None = None
    scores: list[float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class LoadReport:
    """What loading did: rows read, examples kept, rows skipped by reason (for the run summary)."""

    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def add_skip(self, message: str, category: str) -> None:
        self.skipped[category] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped),
                "first_errors": self.first_errors}


# --------------------------------------------------------------------------- reading rows

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
    save_to_disk, a `datasets.Dataset`, a list of dicts, or "hf:owner/name" (hub, needs network)."""
    if isinstance(source, list):
        for i, row in enumerate(source):
            yield _as_raw(f"row {i}", row)
        return
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):  # a datasets.Dataset
        for i, row in enumerate(source):
            yield _as_raw(f"row {i}", row)
        return
    source = str(source)
    if source.startswith("hf:"):
        import datasets

        yield from read_rows(datasets.load_dataset(source[3:], split=split), split)
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
        for i, row in enumerate(loaded):
            yield _as_raw(f"{path.name} row {i}", row)
        return
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        yield from _read_jsonl(path)
    elif name.endswith(".json"):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: cannot be decoded as JSON: {error}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects")
        for i, row in enumerate(rows):
            yield _as_raw(f"{name} row {i}", row)
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield _as_raw(f"{name} row {i}", row)
    else:
        raise DataError(f"{path}: unknown data format; use .jsonl, .jsonl.gz, .json, .parquet or a "
                        f"datasets directory")


def _as_raw(origin: str, row: Any) -> RawRow:
    if not isinstance(row, dict):
        return RawRow(origin, None, BadRow(f"row is not an object but {type(row).__name__}", category=WRONG_TYPE))
    return RawRow(origin, row)


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            origin = f"{path.name}:{number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                yield RawRow(origin, None, BadRow(f"undecodable line: not UTF-8 ({error.reason} at byte {error.start})",
                                                 category=UNDECODABLE))
                continue
            except json.JSONDecodeError as error:
                yield RawRow(origin, None, BadRow(f"undecodable line: invalid JSON ({error.msg} at column {error.colno})",
                                                 category=UNDECODABLE))
                continue
            yield _as_raw(origin, row)


# --------------------------------------------------------------------------- validating fields

def _text(row: dict, name: str, allow_empty: bool = False) -> Text:
    if name not in row or row[name] is None:
        raise BadRow(f"missing field '{name}'", category=MISSING)
    value = row[name]
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise BadRow("empty text", name, EMPTY)
        return value
    if isinstance(value, list):
        if not value and not allow_empty:
            raise BadRow("empty list of messages", name, EMPTY)
        for i, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise BadRow(f"item {i} is not a chat message with string 'role' and 'content'", name, WRONG_TYPE)
        if not allow_empty and not any(m["content"].strip() for m in value):
            raise BadRow("empty text (every message is blank)", name, EMPTY)
        return value
    raise BadRow(f"must be a string or a list of chat messages, got {type(value).__name__}", name, WRONG_TYPE)


def _check_nonempty(text: Text, name: str) -> None:
    empty = not text.strip() if isinstance(text, str) else not any(m["content"].strip() for m in text)
    if empty:
        raise BadRow("empty text", name, EMPTY)


def detect_kind(row: dict) -> str:
    keys = set(row)
    if keys & {"chosen", "rejected"}:
        return "pairwise"
    if "responses" in keys:
        return "listwise"
    if "label" in keys and "completion" in keys:
        return "pointwise"
    if "messages" in keys or "completion" in keys:
        return "sft"
    raise BadRow("cannot tell the data kind: expected chosen/rejected (pairwise), "
                 "completion/label (pointwise), prompt/completion or messages (sft), "
                 f"or responses (listwise); the row has {sorted(keys)}")


# --------------------------------------------------------------------------- implicit prompts

# Turn markers of the HH-RLHF dialogue format. A prompt taken from a common prefix ends right
# after the last assistant marker, so the reply keeps its leading space and nothing is lost.
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_MARKER = re.compile(r"\n\n(Human|Assistant): ")


def split_common_prefix(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split two whole dialogues into (prompt, chosen reply, rejected reply), losslessly.

    Text: the longest common prefix, cut after the last "Assistant:" marker inside it when there
    is one, else at the last whitespace. Messages: the longest common list prefix.
    prompt + reply reproduces each input exactly.
    """
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise BadRow("chosen and rejected must both be text or both be message lists")
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise BadRow("chosen and rejected share no leading messages, so there is no implicit "
                         "prompt; give a 'prompt' field")
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    marker = common.rfind("\n\nAssistant:")
    if marker >= 0:
        cut = marker + len("\n\nAssistant:")
    else:
        cut = max(common.rfind(" "), common.rfind("\n")) + 1
    if cut <= 0:
        raise BadRow("chosen and rejected share no prefix, so there is no implicit prompt; "
                     "give a 'prompt' field")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def hh_to_messages(text: str) -> list[Message]:
    """Parse a "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogue into chat messages.

    Lossless: `messages_to_hh(hh_to_messages(t)) == t`, which the caller can check; a text
    that does not start with a turn marker raises BadRow.
    """
    parts = _HH_MARKER.split(text)
    if parts[0] != "":
        raise BadRow("text does not start with a '\\n\\nHuman: ' or '\\n\\nAssistant: ' turn marker")
    return [{"role": HH_ROLES[role], "content": content} for role, content in zip(parts[1::2], parts[2::2])]


def messages_to_hh(messages: list[Message]) -> str:
    names = {v: k for k, v in HH_ROLES.items()}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)


def _hh_reply_to_messages(reply: str, field_name: str) -> list[Message]:
    """A reply split off after "Assistant:" starts with its space; parse it as assistant turns."""
    messages = hh_to_messages("\n\nAssistant:" + reply)
    if messages_to_hh(messages) != "\n\nAssistant:" + reply:
        raise BadRow("reply does not round-trip through the dialogue format", field_name)
    return messages


# --------------------------------------------------------------------------- rows to examples

def row_to_example(row: dict, origin: str, kind: str = "auto", text_format: str = "auto",
                   extra_columns: tuple[ExtraColumn, ...] = (), extra_responses: tuple[str, ...] = ()) -> Example:
    """Validate one row and normalise it. Raises BadRow naming the field and the reason.

    text_format: "auto"/"text" keep strings as they are; "hh" turns HH-RLHF dialogue strings into
    chat messages (so a chat model's template is applied); "chat" requires message lists.
    extra_columns: numeric per-example columns (a number, or a list with one number per
    response) passed to the methods as data extras, e.g. reward-model margins; an entry may also
    map an extra name to a column or to one column per response (`extra_column_sources`).
    extra_responses: text columns appended to the responses after chosen/rejected, e.g. a gold
    response for TPO (response index 2).
    """
    kind = detect_kind(row) if kind == "auto" else kind
    if kind not in KINDS:
        raise BadRow(f"unknown data kind {kind!r}; use one of {KINDS}")
    if kind == "pairwise":
        example = _pairwise(row, text_format)
    elif kind == "pointwise":
        label = row.get("label")
        if not isinstance(label, bool):
            if "label" not in row:
                raise BadRow("missing field 'label'", category=MISSING)
            raise BadRow(f"must be true or false, got {label!r}", "label", WRONG_TYPE)
        example = Example(_text(row, "prompt"), [_text(row, "completion")], kind, label=label)
    elif kind == "sft":
        if "messages" in row:
            messages = _text(row, "messages")
            if isinstance(messages, str) or messages[-1]["role"] != "assistant":
                raise BadRow("must be a message list ending with an assistant message", "messages", WRONG_TYPE)
            example = Example(messages[:-1], [messages[-1:]], kind)
        else:
            example = Example(_text(row, "prompt"), [_text(row, "completion")], kind)
    else:
        example = _listwise(row)
    for name in extra_responses:
        response = _text(row, name)
        if isinstance(response, list) != example.is_chat:
            raise BadRow("must be the same format (text or messages) as the other responses", name)
        example.responses.append(response)
    for name, columns in extra_column_sources(extra_columns):
        example.extras[name] = _extra_value(row, columns)
    example.origin = origin
    if text_format == "chat" and not example.is_chat:
        raise BadRow("data.format is 'chat' but the row holds plain text")
    return example


ExtraColumn = Union[str, dict]


def extra_column_sources(extra_columns: Iterable[ExtraColumn]) -> list[tuple[str, str | list[str]]]:
    """(extra name, column or columns) pairs from the `data.extra_columns` entries.

    An entry is a column name (the extra has the column's name and value), or a mapping from an
    extra name to a column (a rename) or to a list of columns, one per response, stacked into one
    per-response extra: {rm_scores: [chosen_score, rejected_score]} gives rm_scores = (B, 2).
    """
    sources: list[tuple[str, str | list[str]]] = []
    for entry in extra_columns:
        if isinstance(entry, str):
            sources.append((entry, entry))
        elif isinstance(entry, dict) and all(
                isinstance(name, str) and (isinstance(columns, str) or (
                    isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns)))
                for name, columns in entry.items()):
            sources.extend(entry.items())
        else:
            raise DataError(f"data.extra_columns entry {entry!r} must be a column name or a mapping "
                            "{extra_name: column} or {extra_name: [column per response, ...]}")
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise DataError(f"data.extra_columns names an extra twice: {names}")
    return sources


def _extra_value(row: dict, columns: str | list[str]) -> float | list:
    """One column's number(s), or several columns stacked (one per response); stacked values must agree in shape."""
    if isinstance(columns, str):
        return _number_or_numbers(row, columns)
    values = [_number_or_numbers(row, column) for column in columns]
    shapes = {len(v) if isinstance(v, list) else None for v in values}
    if len(shapes) > 1:
        raise BadRow(f"columns {columns} are stacked into one extra and must all be numbers or lists of the "
                     "same length", columns[0])
    return values


def _number_or_numbers(row: dict, name: str) -> float | list[float]:
    if name not in row or row[name] is None:
        raise BadRow(f"missing field '{name}'", category=MISSING)
    value = row[name]
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if is_number(value):
        return float(value)
    if isinstance(value, list) and value and all(is_number(v) for v in value):
        return [float(v) for v in value]
    raise BadRow(f"must be a number or a list of numbers, got {type(value).__name__}", name, WRONG_TYPE)


def _pairwise(row: dict, text_format: str) -> Example:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _text(row, "prompt")
        # Some datasets repeat the prompt at the start of chosen/rejected: strip it so it is not
        # counted twice (the common chat convention of TRL's implicit/explicit formats).
        if isinstance(prompt, list) and isinstance(chosen, list) and chosen[:len(prompt)] == prompt:
            chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    else:
        prompt, chosen, rejected = split_common_prefix(chosen, rejected)
    if chosen == rejected:
        raise BadRow("chosen and rejected are identical", category=IDENTICAL)
    _check_nonempty(chosen, "chosen")
    _check_nonempty(rejected, "rejected")
    if text_format == "hh":
        if not isinstance(prompt, str):
            raise BadRow("data.format is 'hh' but the row holds chat messages")
        prompt_messages = hh_to_messages(prompt + " ")[:-1] if prompt.endswith("\n\nAssistant:") else None
        if prompt_messages is None:
            raise BadRow("prompt does not end with an '\\n\\nAssistant:' turn marker", "prompt")
        prompt = prompt_messages
        chosen = _hh_reply_to_messages(chosen, "chosen")
        rejected = _hh_reply_to_messages(rejected, "rejected")
    return Example(prompt, [chosen, rejected], "pairwise")


def _listwise(row: dict) -> Example:
    prompt = _text(row, "prompt")
    responses = row.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise BadRow("must be a list of at least two responses", "responses", WRONG_TYPE)
    texts = [_text({"responses": r}, "responses") for r in responses]
    scores = row.get("scores")
    if scores is None and "ranks" in row:
        ranks = row["ranks"]
        if not (isinstance(ranks, list) and len(ranks) == len(texts)
                and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ranks)):
            raise BadRow("must be a list of numbers, one per response", "ranks", WRONG_TYPE)
        scores = [-float(r) for r in ranks]  # rank 1 is best: a higher score is better
    if not (isinstance(scores, list) and len(scores) == len(texts)
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
        raise BadRow("must be a list of numbers, one per response", "scores", WRONG_TYPE)
    return Example(prompt, texts, "listwise", scores=[float(s) for s in scores])


def load_examples(source: Any, kind: str = "auto", text_format: str = "auto", on_bad_row: str = "error",
                  split: str = "train", limit: int | None = None, extra_columns: tuple[ExtraColumn, ...] = (),
                  extra_responses: tuple[str, ...] = ()) -> tuple[list[Example], LoadReport]:
    """Read and validate all rows of `source`; see the module docstring for the policy."""
    extra_column_sources(extra_columns)  # a malformed entry is a configuration error, not a bad row
    detected = kind

    def convert(row: dict, origin: str) -> Example:
        # With kind "auto" the first row that shows its kind fixes it for the whole source, so a
        # later row missing a field is reported as such rather than as a row of another kind.
        nonlocal detected
        if detected == "auto":
            detected = detect_kind(row)
        return row_to_example(row, origin, detected, text_format, tuple(extra_columns), tuple(extra_responses))

    return convert_rows(source, convert, on_bad_row, split, limit)


class SkipRow(Exception):
    """Raised by a row converter for a valid row that carries nothing to learn from (a tie): it is
    left out and counted under `category`, whatever on_bad_row says."""

    def __init__(self, category: str):
        super().__init__(category)
        self.category = category


def convert_rows(source: Any, convert, on_bad_row: str = "error", split: str = "train",
                 limit: int | None = None) -> tuple[list, LoadReport]:
    """Every row of `source` through `convert(row, origin)`, which raises BadRow for a bad row (an error
    naming origin and field, or skipped and counted with on_bad_row: skip) or SkipRow for a row to leave
    out; at most `limit` converted rows. The text rows here and the image rows of preftune/diffusion use it."""
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    examples, report = [], LoadReport()
    for raw in read_rows(source, split):
        if limit is not None and report.kept >= limit:
            break
        report.rows += 1
        try:
            if raw.error:
                raise raw.error
            example = convert(raw.data, raw.origin)
        except SkipRow as skip:
            report.skipped[skip.category] += 1
            continue
        except BadRow as bad:
            message = f"{raw.origin}: {bad.describe()}"
            if on_bad_row == "error":
                raise DataError(message + " (set data.on_bad_row: skip to drop such rows and count them)") from None
            report.add_skip(message, bad.category)
            continue
        examples.append(example)
        report.kept += 1
    if not examples:
        raise DataError(f"{describe_source(source)}: no usable rows ({report.rows} read, {sum(report.skipped.values())} skipped)")
    return examples, report


def pairs_to_unpaired(examples: Iterable[Example]) -> list[Example]:
    """Turn each pair into a desirable and an undesirable completion, for pointwise methods (KTO)."""
    out = []
    for ex in examples:
        out.append(Example(ex.prompt, [ex.responses[0]], "pointwise", label=True, origin=ex.origin))
        out.append(Example(ex.prompt, [ex.responses[1]], "pointwise", label=False, origin=ex.origin))
    return out
