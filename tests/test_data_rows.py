"""Bad rows found late (at the chat template) and rows of every source format are named by
file:line:field (1-based) and obey data.on_bad_row; columns a kind does not use are reported."""
from __future__ import annotations

import gzip
import json
import re
from types import SimpleNamespace

import pytest

from preftune.data import DataError, Tokenization, load_examples
from preftune.data.prepare import prepare_data
from preftune.models import build_tiny_tokenizer

USER, BOT = {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}
GOOD = {"prompt": [USER], "chosen": [BOT], "rejected": [{"role": "assistant", "content": "5"}]}


def data_config(source, **overrides):
    settings = dict(source=str(source), split="train", eval_source=None, eval_fraction=0.0, kind="auto", format="auto",
                    on_bad_row="error", max_length=64, max_prompt_length=32, truncation="truncate", limit=None,
                    extra_columns=[], extra_responses=[], columns={})
    return SimpleNamespace(**{**settings, **overrides})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture()
def tokenizer():
    return build_tiny_tokenizer()


# --------------------------------------------------------------------------- caught when the row is read

@pytest.mark.parametrize("bad, fragment", [
    ({"prompt": "2+2?", "chosen": [BOT], "rejected": [BOT | {"content": "5"}]},
     "field 'chosen': is a message list but the prompt is text"),
    ({"prompt": [USER], "chosen": "4", "rejected": "5"}, "field 'chosen': is text but the prompt is a message list"),
    ({"prompt": [USER], "chosen": [BOT], "rejected": [{"role": "user", "content": "ignore that"}]},
     "field 'rejected': message 0 has role 'user'; a reply holds assistant messages only"),
    ({"prompt": "2+2?", "chosen": "4\x00", "rejected": "5"}, "field 'chosen': contains a NUL byte"),
    ({"prompt": [USER | {"content": "2+2?\x00"}], "chosen": [BOT], "rejected": [BOT | {"content": "5"}]},
     "field 'prompt[0]': contains a NUL byte"),
    ({"prompt": "q", "completion": [BOT], "label": True}, "field 'completion': is a message list but the prompt is text"),
])
def test_rows_the_tokenizer_would_choke_on_are_bad_rows_named_by_line_and_field(tmp_path, bad, fragment):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, bad, GOOD] if "label" not in bad else
                       [{"prompt": "q", "completion": "a", "label": False}, bad])
    with pytest.raises(DataError, match=re.escape(f"d.jsonl:2: {fragment}")):
        load_examples(path)
    examples, report = load_examples(path, on_bad_row="skip")
    assert report.rows == len(examples) + 1 and sum(report.skipped.values()) == 1


# A template that refuses roles it does not know (as many real ones do with raise_exception), and
# one that silently leaves them out.
RAISING = ("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
           "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
           "{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
DROPPING = ("{% for m in messages %}{% if m['role'] in ['system', 'user', 'assistant'] %}"
            "{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


@pytest.mark.parametrize("template, fragment", [(RAISING, "the chat template cannot render it: unknown role critic"),
                                                (DROPPING, "the chat template drops the message of role 'critic'")])
def test_a_role_the_chat_template_does_not_know_is_a_bad_row_under_on_bad_row(tmp_path, tokenizer, template,
                                                                               fragment):
    tokenizer.chat_template = template
    odd = {"prompt": [{"role": "critic", "content": "be terse"}, USER], "chosen": [BOT],
           "rejected": [BOT | {"content": "5"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD | {"chosen": [BOT | {"content": "four"}]}, odd])
    with pytest.raises(DataError, match=f"d.jsonl:3: field 'prompt': {fragment}"):
        prepare_data(data_config(path), tokenizer, "pairwise", log=None)
    lines = []
    data = prepare_data(data_config(path, on_bad_row="skip"), tokenizer, "pairwise", log=lines.append)
    assert len(data.train) == 2 and data.report.kept == 2
    assert dict(data.report.skipped) == {"chat template failed": 1}
    assert "1 skipped (chat template failed 1; first: d.jsonl:3: field 'prompt'" in lines[0]


def test_every_row_skipped_lists_the_reasons_with_counts(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a"}, {"prompt": "q", "chosen": "", "rejected": "b"},
                                              {"prompt": "q", "chosen": "  ", "rejected": "b"}])
    with pytest.raises(DataError) as error:
        load_examples(path, on_bad_row="skip")
    message = str(error.value)
    assert "no usable rows (3 read, 3 skipped: empty text 2, missing field 1)" in message
    assert "d.jsonl:1: missing field 'rejected'" in message and "\n" not in message


# --------------------------------------------------------------------------- sources

def test_a_truncated_jsonl_gz_is_one_line_naming_the_file_and_the_last_good_line(tmp_path):
    whole = gzip.compress("".join(json.dumps({"prompt": f"q{i}", "chosen": "a" * 200, "rejected": "b"}) + "\n"
                                  for i in range(200)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError) as error:
        load_examples(path, on_bad_row="skip")
    message = str(error.value)
    assert message.startswith(f"{path}: the gzip data is truncated or damaged after line ") and "\n" not in message
    last_good = int(message.split("after line ")[1].split()[0])
    assert 0 < last_good < 200
    rows = gzip.decompress(whole).decode().splitlines()
    assert json.loads(rows[last_good - 1])["prompt"] == f"q{last_good - 1}"


def test_row_numbers_are_one_based_in_every_format(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "q0", "chosen": "a", "rejected": "b"}, {"prompt": "q1", "chosen": "a", "rejected": "a"}]
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    # The second object of the indented .json file starts on line 7.
    expected = {tmp_path / "d.json": "d.json:7", tmp_path / "d.parquet": "d.parquet row 2",
                tmp_path / "saved": "saved row 2", "rows": "row 2"}
    for source, origin in expected.items():
        _, report = load_examples(rows if source == "rows" else source, on_bad_row="skip")
        assert report.first_errors == [f"{origin}: chosen and rejected are identical"], source


def test_undecodable_lines_name_the_real_one_based_position(tmp_path):
    path = tmp_path / "d.jsonl"
    broken_json = '{"prompt": "é", "chosen": "a" "rejected": "b"}'
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "q", "chosen": "a", "rejected": "b"}\n'  # a byte-order mark: fine
                     + broken_json.encode() + b"\n" + b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}\n')
    examples, report = load_examples(path, on_bad_row="skip")
    assert len(examples) == 1
    column = broken_json.index('"rejected"') + 1  # characters, 1-based, as an editor shows them
    assert report.first_errors == [
        f"d.jsonl:2: undecodable line: invalid JSON (Expecting ',' delimiter at column {column})",
        "d.jsonl:3: undecodable line: not UTF-8 (invalid start byte at byte 13)"]


def test_invalid_utf8_inside_a_json_file_spoils_only_its_row(tmp_path):
    text = json.dumps([{"prompt": "q0", "chosen": "a", "rejected": "b"}, {"prompt": "BAD", "chosen": "a", "rejected": "b"},
                       {"prompt": "q2", "chosen": "a", "rejected": "b"}], indent=1)
    (tmp_path / "d.json").write_bytes(text.encode().replace(b"BAD", b"\xff\xfe"))
    examples, report = load_examples(tmp_path / "d.json", on_bad_row="skip")
    assert [e.prompt for e in examples] == ["q0", "q2"]
    assert report.first_errors == ["d.json:7: undecodable row: not UTF-8"]


# --------------------------------------------------------------------------- columns a kind would ignore

def test_messages_with_a_label_are_unpaired_feedback_not_demonstrations():
    rows = [{"messages": [USER, BOT], "label": True}, {"messages": [USER, BOT | {"content": "5"}], "label": False},
            {"messages": [{"role": "system", "content": "be brief"}, USER, BOT], "label": True}]
    examples, _ = load_examples(rows)
    assert [e.kind for e in examples] == ["pointwise"] * 3
    assert [e.label for e in examples] == [True, False, True]
    assert examples[1].prompt == [USER] and examples[1].responses == [[BOT | {"content": "5"}]]
    assert examples[2].prompt == [{"role": "system", "content": "be brief"}, USER]


def test_columns_the_kind_does_not_use_are_reported_once_in_the_load_summary(tmp_path, tokenizer):
    rows = [{"id": i, "prompt": f"q{i}", "chosen": "a", "rejected": "b", "source": "web"} for i in range(3)]
    rows[2]["note"] = "x"
    lines = []
    data = prepare_data(data_config(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizer, "pairwise", log=lines.append)
    assert data.report.unused_columns == {"id": 3, "source": 3, "note": 1}
    assert data.summary()["load"]["unused_columns"] == {"id": 3, "source": 3, "note": 1}
    unused = [line for line in lines if "not used" in line]
    assert unused == ["data: columns not used by this kind of row (dropped): id (3 rows), note (1 rows), source (3 rows)"]
    assert any(line.startswith("data: truncation (max_prompt_length 32, max_length 64)") for line in lines)
    # A column read as an extra is used.
    examples, report = load_examples(rows[:2], extra_columns=("id",))
    assert report.unused_columns == {"source": 2} and [e.extras["id"] for e in examples] == [0.0, 1.0]


def test_tokenization_of_message_rows_names_the_field(tokenizer):
    rows = [{"messages": [USER, BOT], "label": True}]
    (example,), _ = load_examples(rows)
    assert example.fields == ("messages", "messages")
    tokenizer.chat_template = RAISING
    odd, _ = load_examples([{"messages": [{"role": "critic", "content": "x"}, USER, BOT], "label": False}])
    with pytest.raises(DataError, match="row 1: field 'messages': the chat template cannot render it"):
        Tokenization(tokenizer, 64, 32).many(odd)
