"""Layouts people already have, turned into the conventions of formats.py before validation.

- `data.columns` maps a dataset's field names onto the conventional ones, e.g.
  {prompt: question, chosen: response_j, rejected: response_k}. Messages about a bad row name
  the dataset's own field.
- ShareGPT (`data.format: sharegpt`, or any row with a `conversations` field under `auto`), the
  layout of LLaMA-Factory's files: `conversations` is a list of turns {"from": "human" | "gpt" |
  "system", "value": ...} (role/content turns are read too); a top-level `system` string is a
  system message; `chosen`/`rejected` are one reply turn or a list of them (pairs); without
  them the conversation is a demonstration, or one unpaired completion when the row has a
  `label` (KTO files).
"""
from __future__ import annotations

from typing import Any

from preftune.data.errors import MISSING, WRONG_TYPE, BadRow, DataError

# Conventional field names a `data.columns` entry may map onto.
CONVENTIONAL_FIELDS = ("prompt", "chosen", "rejected", "completion", "label", "messages", "responses", "scores",
                       "ranks", "conversations", "system")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def check_columns(columns: Any) -> dict[str, str]:
    """The `data.columns` mapping, checked: conventional name -> the dataset's field name."""
    if not isinstance(columns, dict):
        raise DataError(f"data.columns must be a mapping {{conventional name: dataset field}}, got {columns!r}")
    for name, source in columns.items():
        if name not in CONVENTIONAL_FIELDS:
            raise DataError(f"data.columns: {name!r} is not a conventional field; map one of "
                            f"{', '.join(CONVENTIONAL_FIELDS)} onto a dataset field")
        if not isinstance(source, str) or not source:
            raise DataError(f"data.columns.{name} must be a field name (a string), got {source!r}")
    sources = list(columns.values())
    if len(set(sources)) != len(sources):
        raise DataError(f"data.columns maps one dataset field onto two names: {columns}")
    return dict(columns)


class Layout:
    """How one source's rows become conventional rows, and back to the source's names for messages."""

    def __init__(self, columns: dict[str, str] | None = None, text_format: str = "auto"):
        self.columns = check_columns(columns or {})
        self.text_format = text_format
        self._renamed = {source: name for name, source in self.columns.items()}

    def source_name(self, name: str | None) -> str | None:
        """The dataset's name of a conventional field (or of a field inside it, e.g. 'chosen[0]')."""
        if name is None:
            return None
        head, bracket, rest = name.partition("[")
        return self.columns.get(head, head) + bracket + rest

    def is_sharegpt(self, row: dict) -> bool:
        return self.text_format == "sharegpt" or (self.text_format == "auto" and "conversations" in row)

    def convert(self, row: dict) -> dict:
        """The row under conventional names (and in the conventional layout); BadRow names the
        conventional field, which `source_name` turns back into the dataset's."""
        if self.columns:
            renamed = {name: value for name, value in row.items() if name not in self.columns}
            renamed.update({self._renamed[name]: value for name, value in row.items() if name in self._renamed})
            row = renamed
        return sharegpt_to_conventions(row) if self.is_sharegpt(row) else row

    def consumed(self, row: dict, used: set[str]) -> set[str]:
        """The source fields behind the conventional fields `used` (and the ShareGPT fields)."""
        names = set(used)
        if self.is_sharegpt(row):
            names |= {"conversations", "system"} if "conversations" in row or "conversations" in self.columns \
                else {"messages", "system"}
        return {self.columns.get(name, name) for name in names}


def sharegpt_to_conventions(row: dict) -> dict:
    """A ShareGPT row as a conventional one: prompt/chosen/rejected, or messages (+ label)."""
    key = "conversations" if "conversations" in row else "messages"
    if row.get(key) is None:
        raise BadRow("missing field", "conversations", MISSING)
    turns = row[key]
    if not isinstance(turns, list):
        raise BadRow(f"must be a list of turns, got {type(turns).__name__}", key, WRONG_TYPE)
    messages = [_turn(turn, f"{key}[{i}]") for i, turn in enumerate(turns)]
    system = row.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise BadRow(f"must be a string, got {type(system).__name__}", "system", WRONG_TYPE)
        if system.strip() and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": system})
    out = {name: value for name, value in row.items() if name not in (key, "system")}
    if "chosen" in row or "rejected" in row:
        if not messages or messages[-1]["role"] != "user":
            raise BadRow("must end with a user turn, the one chosen and rejected answer", key, WRONG_TYPE)
        out["prompt"] = messages
        for name in ("chosen", "rejected"):
            if name in row:
                out[name] = _replies(row[name], name)
    else:
        out["messages"] = messages
    return out


def _turn(turn: Any, where: str) -> dict[str, str]:
    if not isinstance(turn, dict):
        raise BadRow(f"must be a turn {{from, value}}, got {type(turn).__name__}", where, WRONG_TYPE)
    role, content = (turn.get("from"), turn.get("value")) if "from" in turn else (turn.get("role"), turn.get("content"))
    if not isinstance(role, str) or role not in SHAREGPT_ROLES:
        raise BadRow(f"role {role!r} is not one of {', '.join(SHAREGPT_ROLES)}", where, WRONG_TYPE)
    if not isinstance(content, str):
        raise BadRow(f"the turn's text must be a string, got {type(content).__name__}", where, WRONG_TYPE)
    return {"role": SHAREGPT_ROLES[role], "content": content}


def _replies(value: Any, name: str) -> list[dict[str, str]]:
    """A reply: one turn, a list of turns, or plain text (an assistant turn)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [_turn(value, name)]
    if isinstance(value, list) and value:
        return [_turn(turn, f"{name}[{i}]") for i, turn in enumerate(value)]
    raise BadRow(f"must be a turn {{from, value}} or a list of turns, got {type(value).__name__}", name, WRONG_TYPE)
