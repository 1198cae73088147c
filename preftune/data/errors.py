"""The data layer's two errors and the categories under which skipped rows are counted."""
from __future__ import annotations


class DataError(ValueError):
    """A bad row under `on_bad_row: error`, or a source that cannot be read at all."""


# The countable kinds of bad row, as they appear in the run summary.
MISSING, WRONG_TYPE, EMPTY, IDENTICAL, UNDECODABLE, INCONSISTENT = (
    "missing field", "wrong type", "empty text", "chosen == rejected", "undecodable line", "inconsistent row")
INVALID_TEXT, UNTOKENIZABLE = "invalid text", "chat template failed"


class BadRow(ValueError):
    """Raised inside row conversion; carries the field (so the message can name it) and the
    category under which a skipped row is counted."""

    def __init__(self, reason: str, field_name: str | None = None, category: str = INCONSISTENT):
        super().__init__(reason)
        self.reason, self.field, self.category = reason, field_name, category

    def describe(self) -> str:
        if self.category == MISSING and self.field:
            return f"missing field '{self.field}'"
        return f"field '{self.field}': {self.reason}" if self.field else self.reason
