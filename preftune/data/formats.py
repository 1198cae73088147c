"""Turning each row into an `Example`, with row-level validation.

Accepted conventions (the Hugging Face ones):
- pairwise, explicit prompt: {"prompt", "chosen", "rejected"}; chosen/rejected given as whole
  dialogues that start with the prompt's turns (UltraFeedback: a text prompt, message-list
  replies that repeat it as their user turn) keep only the reply
- pairwise, implicit prompt: {"chosen", "rejected"} holding whole dialogues that share every turn
  but the last reply (HH-RLHF); the prompt is their common prefix, cut at a turn boundary
- pointwise (KTO): {"prompt", "completion", "label"}, or {"messages", "label"} where the prompt is
  every message but the last (assistant) one
- demonstrations (SFT): {"prompt", "completion"} or {"messages"}
- listwise: {"prompt", "responses", "scores"} (or "ranks")
Each text field is either plain text or a list of chat messages {"role", "content"}, the same
in every field of a row; a reply given as messages holds assistant turns only. Other layouts
(ShareGPT, other field names) are converted first (layouts.py).

Every bad row is reported with its origin (file and line, or row number), the field and the
reason. `on_bad_row="error"` stops at the first one; `"skip"` drops it and counts the reason.
A column that the row's kind does not use is counted in the load report, never dropped silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from preftune.data.dialogue import Message, Text, hh_reply_to_messages, hh_to_messages, messages_to_hh, \
    shared_turns, split_common_prefix
from preftune.data.errors import (EMPTY, IDENTICAL, INCONSISTENT, INVALID_TEXT, MISSING, UNDECODABLE, WRONG_TYPE,
                                  BadRow, DataError)
from preftune.data.layouts import Layout
from preftune.data.load_report import LoadReport
from preftune.data.reading import RawRow, describe_source, read_rows

__all__ = ["BadRow", "DataError", "Example", "LoadReport", "Message", "RawRow", "Text", "describe_source",
           "detect_kind", "extra_column_sources", "hh_to_messages", "messages_to_hh", "load_examples", "pairs_to_unpaired",
           "read_rows", "row_to_example", "split_common_prefix", "EMPTY", "IDENTICAL", "INCONSISTENT", "MISSING",
           "UNDECODABLE", "WRONG_TYPE"]

KINDS = ("pairwise", "pointwise", "sft", "listwise")
TEXT_FORMATS = ("auto", "text", "chat", "hh", "sharegpt")


@dataclass
class Example:
    """One normalised row. For pairwise data `responses` is [chosen, rejected].

    fields: the source's name of the prompt's field, then of each response's (for messages that
    come later, e.g. from the chat template)."""

    prompt: Text
    responses: list[Text]
    kind: str
    label: bool | None = None
    scores: list[float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    fields: tuple[str, ...] = ()

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


# --------------------------------------------------------------------------- validating fields

def text_problem(text: str) -> str | None:
    """Why the data layer would reject `text` as a field's value, or None when it is acceptable.
    Generated text is checked with this too: a barely trained model samples arbitrary bytes."""
    if "\x00" in text:
        return "contains a NUL byte (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800" in JSON, or bytes that were not UTF-8
        return "is not valid Unicode text (a lone surrogate)"
    return None


def usable_response(text: str) -> bool:
    """A sampled response the data layer accepts: not blank and free of text_problem()s."""
    return bool(text.strip()) and text_problem(text) is None


def _clean(text: str, name: str) -> str:
    problem = text_problem(text)
    if problem:
        raise BadRow(problem, name, INVALID_TEXT)
    return text


def _text(row: dict, name: str) -> Text:
    if row.get(name) is None:
        raise BadRow("missing field", name, MISSING)
    value = row[name]
    if isinstance(value, str):
        if not _clean(value, name).strip():
            raise BadRow("empty text", name, EMPTY)
        return value
    if isinstance(value, list):
        if not value:
            raise BadRow("empty list of messages", name, EMPTY)
        for i, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise BadRow(f"item {i} is not a chat message with string 'role' and 'content'", name, WRONG_TYPE)
            _clean(message["role"], f"{name}[{i}]")
            _clean(message["content"], f"{name}[{i}]")
        if not any(m["content"].strip() for m in value):
            raise BadRow("empty text (every message is blank)", name, EMPTY)
        return value
    raise BadRow(f"must be a string or a list of chat messages, got {type(value).__name__}", name, WRONG_TYPE)


def _check_nonempty(text: Text, name: str) -> None:
    empty = not text.strip() if isinstance(text, str) else not any(m["content"].strip() for m in text)
    if empty:
        raise BadRow("empty text", name, EMPTY)


def _check_reply(reply: Text, name: str, prompt: Text) -> None:
    """A reply is in the prompt's format, and as messages it holds only assistant turns (any
    other turn would be trained as the model's own words)."""
    if isinstance(reply, list) != isinstance(prompt, list):
        have, want = ("a message list", "text") if isinstance(reply, list) else ("text", "a message list")
        raise BadRow(f"is {have} but the prompt is {want}; a row keeps one format", name, WRONG_TYPE)
    if isinstance(reply, list):
        for i, message in enumerate(reply):
            if message["role"] != "assistant":
                raise BadRow(f"message {i} has role {message['role']!r}; a reply holds assistant messages only",
                             name, INCONSISTENT)


def detect_kind(row: dict) -> str:
    keys = set(row)
    if keys & {"chosen", "rejected"}:
        return "pairwise"
    if "responses" in keys:
        return "listwise"
    if "label" in keys and keys & {"completion", "messages"}:
        return "pointwise"
    if "messages" in keys or "completion" in keys:
        return "sft"
    raise BadRow("cannot tell the data kind: expected chosen/rejected (pairwise), completion/label or "
                 "messages/label (pointwise), prompt/completion or messages (sft), or responses (listwise); "
                 f"the row has {sorted(map(str, keys))} (data.columns maps other field names)")


# Which fields each kind reads (the rest of a row is reported as unused).
USED_FIELDS = {"pairwise": {"prompt", "chosen", "rejected"}, "pointwise": {"prompt", "completion", "messages", "label"},
               "sft": {"prompt", "completion", "messages"}, "listwise": {"prompt", "responses", "scores", "ranks"}}


def _used_fields(kind: str, row: dict) -> set[str]:
    used = set(USED_FIELDS[kind])
    if kind in ("pointwise", "sft"):
        used -= {"messages"} if "completion" in row else {"prompt", "completion"}
    if kind == "listwise":
        used -= {"ranks"} if row.get("scores") is not None else {"scores"}
    return used


# --------------------------------------------------------------------------- rows to examples

def row_to_example(row: dict, origin: str, kind: str = "auto", text_format: str = "auto",
                   extra_columns: tuple[ExtraColumn, ...] = (), extra_responses: tuple[str, ...] = ()) -> Example:
    """Validate one conventional row and normalise it. Raises BadRow naming the field and the reason.

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
    elif kind in ("pointwise", "sft"):
        example = _single_completion(row, kind)
    else:
        example = _listwise(row)
    for name in extra_responses:
        response = _text(row, name)
        _check_reply(response, name, example.prompt)
        example.responses.append(response)
        example.fields += (name,)
    for name, columns in extra_column_sources(extra_columns):
        example.extras[name] = _extra_value(row, columns)
    example.origin = origin
    if text_format == "chat" and not example.is_chat:
        raise BadRow("data.format is 'chat' but the row holds plain text")
    return example


def _single_completion(row: dict, kind: str) -> Example:
    """A pointwise (labelled) or SFT row: prompt/completion, or a message list whose last
    (assistant) message is the completion."""
    label = None
    if kind == "pointwise":
        label = row.get("label")
        if not isinstance(label, bool):
            if label is None:
                raise BadRow("missing field", "label", MISSING)
            raise BadRow(f"must be true or false, got {label!r}", "label", WRONG_TYPE)
    if "completion" in row or "messages" not in row:
        prompt, completion = _text(row, "prompt"), _text(row, "completion")
        _check_reply(completion, "completion", prompt)
        return Example(prompt, [completion], kind, label=label, fields=("prompt", "completion"))
    messages = _text(row, "messages")
    if isinstance(messages, str) or messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise BadRow("must be a message list ending with an assistant message, after at least one prompt message",
                     "messages", WRONG_TYPE)
    _check_nonempty(messages[-1:], "messages")
    return Example(messages[:-1], [messages[-1:]], kind, label=label, fields=("messages", "messages"))


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number_or_numbers(row: dict, name: str) -> float | list[float]:
    if row.get(name) is None:
        raise BadRow("missing field", name, MISSING)
    value = row[name]
    if _is_number(value):
        return float(value)
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        return [float(v) for v in value]
    raise BadRow(f"must be a number or a list of numbers (finite ones), got {_short(value)}", name, WRONG_TYPE)


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _pairwise(row: dict, text_format: str) -> Example:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    if row.get("prompt") is not None:
        prompt = _text(row, "prompt")
        fields = ("prompt", "chosen", "rejected")
        if isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _strip_repeated_prompt(prompt, chosen, rejected)
    else:
        prompt, chosen, rejected = split_common_prefix(chosen, rejected)
        fields = ("chosen", "chosen", "rejected")
    if chosen == rejected:
        raise BadRow("chosen and rejected are identical", category=IDENTICAL)
    _check_nonempty(chosen, "chosen")
    _check_nonempty(rejected, "rejected")
    if text_format == "hh":
        if not isinstance(prompt, str):
            raise BadRow("data.format is 'hh' but the row holds chat messages")
        if not prompt.endswith("\n\nAssistant:"):
            raise BadRow("prompt does not end with an '\\n\\nAssistant:' turn marker", "prompt")
        prompt = hh_to_messages(prompt + " ")[:-1]
        chosen = hh_reply_to_messages(chosen, "chosen")
        rejected = hh_reply_to_messages(rejected, "rejected")
    _check_reply(chosen, "chosen", prompt)
    _check_reply(rejected, "rejected", prompt)
    return Example(prompt, [chosen, rejected], "pairwise", fields=fields)


def _strip_repeated_prompt(prompt: Text, chosen: list[Message], rejected: list[Message]):
    """Replies given as whole dialogues that start with the prompt keep only what follows it: the
    prompt's messages (TRL's convention), or, for a text prompt, the shared turns up to a user turn
    that holds the prompt's text (UltraFeedback's `chosen`: [user prompt, assistant reply])."""
    if isinstance(prompt, list):
        n = len(prompt) if chosen[:len(prompt)] == prompt and rejected[:len(prompt)] == prompt else 0
        return prompt, chosen[n:], rejected[n:]
    n = shared_turns(chosen, rejected)
    while n and chosen[n - 1]["role"] != "user":
        n -= 1
    if n and chosen[n - 1]["content"].strip() == prompt.strip():
        return chosen[:n], chosen[n:], rejected[n:]
    return prompt, chosen, rejected


def _listwise(row: dict) -> Example:
    prompt = _text(row, "prompt")
    responses = row.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise BadRow("must be a list of at least two responses", "responses", WRONG_TYPE)
    texts = [_text({f"responses[{i}]": r}, f"responses[{i}]") for i, r in enumerate(responses)]
    for i, text in enumerate(texts):
        _check_reply(text, f"responses[{i}]", prompt)
    scores = row.get("scores")
    if scores is None and "ranks" in row:
        ranks = row["ranks"]
        if not (isinstance(ranks, list) and len(ranks) == len(texts) and all(_is_number(r) for r in ranks)):
            raise BadRow("must be a list of numbers, one per response", "ranks", WRONG_TYPE)
        scores = [-float(r) for r in ranks]  # rank 1 is best: a higher score is better
    if not (isinstance(scores, list) and len(scores) == len(texts) and all(_is_number(s) for s in scores)):
        raise BadRow("must be a list of numbers, one per response", "scores", WRONG_TYPE)
    return Example(prompt, texts, "listwise", scores=[float(s) for s in scores],
                   fields=("prompt", *(f"responses[{i}]" for i in range(len(texts)))))


def load_examples(source: Any, kind: str = "auto", text_format: str = "auto", on_bad_row: str = "error",
                  split: str = "train", limit: int | None = None, extra_columns: tuple[ExtraColumn, ...] = (),
                  extra_responses: tuple[str, ...] = (), columns: dict[str, str] | None = None
                  ) -> tuple[list[Example], LoadReport]:
    """Read and validate all rows of `source`; see the module docstring for the policy.

    columns: `data.columns`, conventional name -> the source's field name (layouts.py)."""
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if text_format not in TEXT_FORMATS:
        raise DataError(f"data.format must be one of {', '.join(TEXT_FORMATS)}, got {text_format!r}")
    extra_column_sources(extra_columns)  # a malformed entry is a configuration error, not a bad row
    layout = Layout(columns, text_format)
    extras = {c for _, cs in extra_column_sources(extra_columns) for c in ([cs] if isinstance(cs, str) else cs)}
    extras |= set(extra_responses)
    detected = kind

    def convert(data: dict, origin: str, report: LoadReport) -> Example:
        # With kind "auto" the first row that shows its kind fixes it for the whole source, so a
        # later row missing a field is reported as such rather than as a row of another kind.
        nonlocal detected
        try:
            row = layout.convert(data)
            if detected == "auto":
                detected = detect_kind(row)
            example = row_to_example(row, origin, detected, "auto" if text_format == "sharegpt" else text_format,
                                     tuple(extra_columns), tuple(extra_responses))
        except BadRow as bad:
            bad.field = layout.source_name(bad.field)
            raise
        example.fields = tuple(layout.source_name(name) for name in example.fields)
        report.unused_columns.update(set(data) - layout.consumed(data, _used_fields(detected, row)) - extras)
        return example

    return convert_rows(source, convert, on_bad_row, split, limit)


class SkipRow(Exception):
    """Raised by a row converter for a valid row that carries nothing to learn from (a tie): it is
    left out and counted under `category`, whatever on_bad_row says."""

    def __init__(self, category: str):
        super().__init__(category)
        self.category = category


def convert_rows(source: Any, convert, on_bad_row: str = "error", split: str = "train",
                 limit: int | None = None) -> tuple[list, LoadReport]:
    """Every row of `source` through `convert(row, origin, report)`, which raises BadRow for a bad row
    (an error naming origin and field, or skipped and counted with on_bad_row: skip) or SkipRow for a
    row to leave out; at most `limit` converted rows. The text rows here and the image rows of
    preftune/diffusion use it."""
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    examples, report = [], LoadReport()
    for raw in read_rows(source, split):
        if limit is not None and report.kept >= limit:
            break
        report.rows += 1
        try:
            if raw.error:
                raise raw.error
            example = convert(raw.data, raw.origin, report)
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
        raise DataError(report.nothing_usable(describe_source(source)))
    return examples, report


def pairs_to_unpaired(examples: Iterable[Example]) -> list[Example]:
    """Turn each pair into a desirable and an undesirable completion, for pointwise methods (KTO)."""
    out = []
    for ex in examples:
        prompt_field, chosen_field, rejected_field = (ex.fields + ("", "", ""))[:3]
        out.append(Example(ex.prompt, [ex.responses[0]], "pointwise", label=True, origin=ex.origin,
                           fields=(prompt_field, chosen_field)))
        out.append(Example(ex.prompt, [ex.responses[1]], "pointwise", label=False, origin=ex.origin,
                           fields=(prompt_field, rejected_field)))
    return out
