"""Property-based fuzzing of the data layer (hypothesis): random rows of every kind, good ones and
broken ones (wrong types, nesting, huge and empty fields, control characters, NUL bytes, lone
surrogates, invalid UTF-8 and JSON lines), are read, validated and tokenized. Only the
project's own DataError may come out, and under on_bad_row: skip every good row is kept."""
from __future__ import annotations

import json
import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from preftune.data import DataError, Tokenization, load_examples  # noqa: E402
from preftune.models import build_tiny_tokenizer  # noqa: E402

TOKENIZER = build_tiny_tokenizer()
# Any Unicode text but NUL and lone surrogates, with at least one visible character: a good field.
GOOD_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                    max_size=40).filter(lambda s: s.strip()) | st.text(string.ascii_letters, min_size=2000, max_size=4000)
WORD = st.text(string.ascii_lowercase, min_size=1, max_size=8)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
                    | st.sampled_from(["", " \n\t", "a\x00b", "\ud800", "\x1b[31m"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
KINDS = ("pairwise", "implicit", "pointwise", "unpaired_messages", "sft", "listwise", "sharegpt")


def messages(draw, roles):
    return [{"role": role, "content": draw(GOOD_TEXT)} for role in roles]


@st.composite
def good_row(draw, kind):
    """A row that must load: distinct replies, the same format in every field."""
    if kind == "pairwise":
        if draw(st.booleans()):
            chosen, rejected = draw(st.lists(GOOD_TEXT, min_size=2, max_size=2, unique_by=str.strip))
            return {"prompt": draw(GOOD_TEXT), "chosen": chosen, "rejected": rejected}
        a, b = draw(st.lists(GOOD_TEXT, min_size=2, max_size=2, unique_by=str.strip))
        return {"prompt": messages(draw, ["system", "user"]), "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": b}]}
    if kind == "implicit":
        prompt = " ".join(draw(st.lists(WORD, min_size=1, max_size=4)))
        a, b = draw(st.lists(WORD, min_size=2, max_size=2, unique=True))
        return {"chosen": f"{prompt} {a}", "rejected": f"{prompt} {b}"}
    if kind == "pointwise":
        return {"prompt": draw(GOOD_TEXT), "completion": draw(GOOD_TEXT), "label": draw(st.booleans())}
    if kind == "unpaired_messages":
        return {"messages": messages(draw, ["user", "assistant"]), "label": draw(st.booleans())}
    if kind == "sft":
        return {"messages": messages(draw, ["user", "assistant", "user", "assistant"])}
    if kind == "listwise":
        n = draw(st.integers(2, 4))
        return {"prompt": draw(GOOD_TEXT), "responses": draw(st.lists(GOOD_TEXT, min_size=n, max_size=n)),
                "scores": draw(st.lists(st.floats(-10, 10), min_size=n, max_size=n))}
    a, b = draw(st.lists(GOOD_TEXT, min_size=2, max_size=2, unique_by=str.strip))
    return {"conversations": [{"from": "human", "value": draw(GOOD_TEXT)}], "chosen": {"from": "gpt", "value": a},
            "rejected": {"from": "gpt", "value": b}}


@st.composite
def source(draw):
    """(kind, lines of a .jsonl file as bytes, which lines hold good rows)."""
    kind = draw(st.sampled_from(KINDS))
    lines, good = [], set()
    for _ in range(draw(st.integers(1, 8))):
        row = draw(good_row(kind))
        extra = draw(st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=5).map("x_".__add__), JSON,
                                     max_size=2))
        choice = draw(st.sampled_from(["good", "good", "field", "drop", "line", "utf8"]))
        if choice == "field":  # any field replaced by any JSON value (which may, by chance, still be good)
            row[draw(st.sampled_from(sorted(row)))] = draw(JSON)
        elif choice == "drop":
            del row[draw(st.sampled_from(sorted(row)))]
        line = json.dumps({**row, **extra}).encode()
        if choice == "line":
            line = draw(st.sampled_from([line[:len(line) // 2], b"[1, 2]", b"null", b"{" + line]))
        elif choice == "utf8":
            line = line.replace(b"{", b"{\xff", 1)
        if choice == "good":
            good.add(len(lines) + 1)
        lines.append(line)
    return kind, lines, good


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(source())
def test_only_data_errors_come_out_and_skip_keeps_every_good_row(tmp_path_factory, generated):
    kind, lines, good = generated
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    data_kind = {"implicit": "pairwise", "unpaired_messages": "pointwise", "sharegpt": "pairwise"}.get(kind, kind)
    text_format = "sharegpt" if kind == "sharegpt" else "auto"
    try:
        examples, report = load_examples(path, kind=data_kind, text_format=text_format, on_bad_row="skip")
    except DataError:
        assert not good  # only a source without one usable row may fail as a whole
        return
    kept = {int(e.origin.split(":")[1]) for e in examples}
    assert good <= kept, (sorted(good - kept), report.first_errors)
    assert report.rows == len(lines) and report.kept + sum(report.skipped.values()) == report.rows
    tokenization = Tokenization(TOKENIZER, 256, 128)
    tokenized = tokenization.many(examples, on_bad_row="skip", report=report)
    assert len(tokenized) == len(examples)  # the tiny chat template renders every role
    with pytest.raises(DataError) if len(lines) > len(good | kept) else _nothing():
        load_examples(path, kind=data_kind, text_format=text_format, on_bad_row="error")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
