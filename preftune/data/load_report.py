"""What loading did, for the run summary, the console and `preftune report`: rows read and kept,
rows skipped by reason, columns no kind used, truncation."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FIRST_ERRORS = 10  # skipped rows whose message is kept (the count of every reason is always kept)


@dataclass
class LoadReport:
    """Rows read, examples kept, rows skipped by reason, and columns the rows' kind does not use."""

    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    unused_columns: Counter = field(default_factory=Counter)  # column -> rows that had it
    dropped_after_load: set = field(default_factory=set, repr=False)  # origins skipped at tokenization

    def add_skip(self, message: str, category: str) -> None:
        self.skipped[category] += 1
        if len(self.first_errors) < FIRST_ERRORS:
            self.first_errors.append(message)

    def drop_after_load(self, origin: str, message: str, category: str) -> None:
        """A kept row found bad later (by the chat template): counted once, however many examples it made."""
        if origin not in self.dropped_after_load:
            self.dropped_after_load.add(origin)
            self.kept -= 1
            self.add_skip(message, category)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped),
                "first_errors": self.first_errors, "unused_columns": dict(self.unused_columns)}

    def reasons(self) -> str:
        """'empty text 4, missing field 1', most frequent first."""
        return ", ".join(f"{reason} {count}" for reason, count in self.skipped.most_common())

    def nothing_usable(self, source: str) -> str:
        """The error when every row was skipped: the reasons with their counts and the first rows."""
        first = "; ".join(self.first_errors[:3])
        return (f"{source}: no usable rows ({self.rows} read, {sum(self.skipped.values())} skipped: {self.reasons()})"
                + (f"; first: {first}" if first else ""))

    def lines(self, name: str = "data") -> list[str]:
        """The load summary as printed: counts, skip reasons, unused columns."""
        lines = [f"{name}: {self.rows} rows read, {self.kept} kept"
                 + (f", {sum(self.skipped.values())} skipped ({self.reasons()}; first: {self.first_errors[0]})"
                    if self.skipped else "")]
        if self.unused_columns:
            columns = ", ".join(f"{c} ({n} rows)" for c, n in sorted(self.unused_columns.items()))
            lines.append(f"{name}: columns not used by this kind of row (dropped): {columns}")
        return lines


def truncation_line(stats: dict[str, int], max_length: int, max_prompt_length: int, name: str = "data") -> str:
    """One line on what truncation did (counted, never silent)."""
    return (f"{name}: truncation (max_prompt_length {max_prompt_length}, max_length {max_length}): "
            f"{stats.get('prompts_truncated', 0)} prompts and {stats.get('responses_truncated', 0)} examples' "
            f"responses cut, {stats.get('examples_dropped', 0)} examples dropped")
