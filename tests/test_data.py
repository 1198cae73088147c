"""The data layer: real HH-RLHF rows load and convert without loss; every bad row is named clearly."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from preftune.data import DataError, Tokenization, collate, load_examples
from preftune.data.formats import hh_to_messages, messages_to_hh, split_common_prefix
from preftune.models import build_tiny_tokenizer

# The shared data sits beside the project checkout (or beside its worktrees' folder).
HH = next((root / "shared" / "data" / "hh-rlhf-harmless-base-test-part1.jsonl.gz"
           for root in Path(__file__).resolve().parents[2:4]
           if (root / "shared" / "data" / "hh-rlhf-harmless-base-test-part1.jsonl.gz").exists()),
          Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test-part1.jsonl.gz")
# Lines of the sample whose chosen reply is empty ("...\n\nAssistant: " and nothing after it).
HH_EMPTY_CHOSEN_LINES = [87, 517, 926, 1104]

pytestmark = pytest.mark.skipif(not HH.exists(), reason="../shared/data is not beside this checkout")


@pytest.fixture(scope="module")
def hh_rows():
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


# --------------------------------------------------------------------------- real data, lossless

def test_hh_sample_loads_with_its_four_empty_replies_named_and_counted(hh_rows):
    examples, report = load_examples(HH, on_bad_row="skip")
    assert report.rows == 1500 and report.kept == 1496 == len(examples)
    assert dict(report.skipped) == {"empty text": 4}
    assert [int(e.split(":")[1]) for e in report.first_errors] == HH_EMPTY_CHOSEN_LINES
    assert all("field 'chosen': empty text" in e for e in report.first_errors)


def test_hh_error_policy_stops_at_the_first_bad_row_with_file_line_and_field():
    with pytest.raises(DataError) as error:
        load_examples(HH)
    assert str(error.value).startswith("hh-rlhf-harmless-base-test-part1.jsonl.gz:87: field 'chosen': empty text")
    assert "on_bad_row: skip" in str(error.value)


def test_hh_implicit_prompt_split_is_lossless_for_every_row(hh_rows):
    examples, _ = load_examples(HH, on_bad_row="skip")
    kept_rows = [row for i, row in enumerate(hh_rows, start=1) if i not in HH_EMPTY_CHOSEN_LINES]
    for row, example in zip(kept_rows, examples):
        chosen, rejected = example.responses
        assert example.prompt + chosen == row["chosen"]
        assert example.prompt + rejected == row["rejected"]
        # The prompt ends at a turn boundary: after the last shared "Assistant:" marker.
        assert example.prompt.endswith("\n\nAssistant:")


def test_hh_dialogues_convert_to_chat_messages_and_back_exactly(hh_rows):
    text_examples, _ = load_examples(HH, on_bad_row="skip")
    chat_examples, report = load_examples(HH, on_bad_row="skip", text_format="hh")
    assert report.kept == 1496
    for text, chat in zip(text_examples, chat_examples):
        assert messages_to_hh(chat.prompt) + "\n\nAssistant:" == text.prompt
        for text_reply, chat_reply in zip(text.responses, chat.responses):
            assert all(m["role"] == "assistant" for m in chat_reply)
            assert messages_to_hh(chat_reply) == "\n\nAssistant:" + text_reply
    # The row whose chosen reply contains a whole extra turn keeps it (as two assistant turns).
    assert max(len(ex.responses[0]) for ex in chat_examples) == 2


def test_hh_chat_rows_tokenize_through_the_chat_template_with_truncation_counted(tokenizer):
    examples, _ = load_examples(HH, on_bad_row="skip", text_format="hh", limit=60)
    tokenization = Tokenization(tokenizer, max_length=512, max_prompt_length=256)
    tokenized = tokenization.many(examples)
    assert len(tokenized) == 60
    stats = tokenization.stats.as_dict()
    long_prompts = sum(len(tokenizer(tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True),
                                     add_special_tokens=False)["input_ids"]) > 256 for ex in examples)
    assert stats["prompts_truncated"] == long_prompts > 0
    assert all(len(t.prompt_ids) <= 256 and len(t.prompt_ids) + max(map(len, t.response_ids)) <= 512
               for t in tokenized)


def test_hh_truncation_drop_and_error_policies(tokenizer):
    examples, _ = load_examples(HH, on_bad_row="skip", limit=60)
    dropping = Tokenization(tokenizer, max_length=512, max_prompt_length=256, truncation="drop")
    kept = dropping.many(examples)
    assert len(kept) + dropping.stats.examples_dropped == 60 and dropping.stats.examples_dropped > 0
    with pytest.raises(DataError, match="exceed max_prompt_length=256"):
        Tokenization(tokenizer, 512, 256, truncation="error").many(examples)


# --------------------------------------------------------------------------- bad rows

GOOD = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
BAD_LINES = {
    # line text -> expected message fragment (after "file:line: ")
    '{"prompt": "q", "chosen": "a"}': "missing field 'rejected'",
    '{"prompt": "q", "chosen": 3, "rejected": "b"}': "field 'chosen': must be a string or a list of chat messages, got int",
    '{"prompt": "q", "chosen": "   ", "rejected": "b"}': "field 'chosen': empty text",
    '{"prompt": "q", "chosen": "same", "rejected": "same"}': "chosen and rejected are identical",
    '{"prompt": "q", "chosen": "a", "rejected": ': "undecodable line: invalid JSON",
    '[1, 2]': "row is not an object but list",
    '{"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}': "field 'chosen': item 0 is not a chat message",
}


def _mixed_file(tmp_path) -> tuple[Path, dict[int, str]]:
    """Good rows with every kind of bad row between them; returns the path and {line: fragment}."""
    lines, expected = [], {}
    good = iter(GOOD)
    for bad, fragment in BAD_LINES.items():
        lines.append(json.dumps(next(good, GOOD[0])))
        lines.append(bad)
        expected[len(lines)] = fragment
    lines.append(json.dumps(GOOD[-1]))
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')
    expected[len(lines) + 1] = "undecodable line: not UTF-8"
    return path, expected


def test_every_bad_row_is_reported_with_file_line_and_reason(tmp_path):
    path, expected = _mixed_file(tmp_path)
    _, report = load_examples(path, on_bad_row="skip")
    messages = report.first_errors
    assert len(messages) == len(expected)
    for message, (line, fragment) in zip(messages, sorted(expected.items())):
        assert message.startswith(f"mixed.jsonl:{line}: "), message
        assert fragment in message, (fragment, message)
    assert report.skipped == {"missing field": 1, "wrong type": 3, "empty text": 1, "chosen == rejected": 1,
                              "undecodable line": 2}


def test_skip_policy_loses_no_good_row(tmp_path):
    path, expected = _mixed_file(tmp_path)
    examples, report = load_examples(path, on_bad_row="skip")
    good_lines = [json.loads(line) for n, line in enumerate(path.read_bytes().decode("utf-8", "replace")
                                                              .splitlines(), start=1) if n not in expected]
    assert [(e.prompt, *e.responses) for e in examples] == [(r["prompt"], r["chosen"], r["rejected"]) for r in good_lines]
    assert report.kept == len(good_lines) and report.rows == len(good_lines) + len(expected)


def test_error_policy_names_the_first_bad_row(tmp_path):
    path, expected = _mixed_file(tmp_path)
    first = min(expected)
    with pytest.raises(DataError, match=f"mixed.jsonl:{first}: {expected[first]}"):
        load_examples(path)


@pytest.mark.parametrize("row, fragment", [
    ({"prompt": "q", "completion": "a", "label": "yes"}, "field 'label': must be true or false, got 'yes'"),
    ({"prompt": "q", "responses": ["a"], "scores": [1]}, "field 'responses': must be a list of at least two"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1]}, "field 'scores': must be a list of numbers, one per response"),
    ({"question": "q", "answer": "a"}, "cannot tell the data kind"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "field 'messages': must be a message list ending with an assistant"),
])
def test_other_kinds_validate_their_fields(row, fragment):
    with pytest.raises(DataError, match=fragment.replace("(", r"\(")):
        load_examples([row])


# --------------------------------------------------------------------------- sources and conventions

def test_jsonl_json_parquet_and_datasets_sources_give_the_same_examples(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = GOOD
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved_dict"))
    expected = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    for source in [tmp_path / "d.jsonl", tmp_path / "d.json", tmp_path / "d.parquet", tmp_path / "saved",
                   tmp_path / "saved_dict", dataset, rows]:
        examples, _ = load_examples(source)
        assert [(e.prompt, *e.responses) for e in examples] == expected, source
    with pytest.raises(DataError, match="no split 'test'"):
        load_examples(tmp_path / "saved_dict", split="test")
    with pytest.raises(DataError, match="unknown data format"):
        (tmp_path / "d.csv").write_text("a,b")
        load_examples(tmp_path / "d.csv")


def test_chat_messages_explicit_and_implicit_prompt(tokenizer):
    user = {"role": "user", "content": "2+2?"}
    explicit = {"prompt": [user], "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}]}
    implicit = {"chosen": [user, {"role": "assistant", "content": "4"}],
                "rejected": [user, {"role": "assistant", "content": "5"}]}
    (a,), _ = load_examples([explicit])
    (b,), _ = load_examples([implicit])
    assert a.prompt == b.prompt == [user] and a.responses == b.responses
    tokenized = Tokenization(tokenizer, 64, 32)(a)
    full = tokenizer.apply_chat_template([user, {"role": "assistant", "content": "4"}], tokenize=False)
    assert tokenizer.decode(tokenized.prompt_ids + tokenized.response_ids[0]) == full
    assert tokenizer.decode(tokenized.response_ids[0]) == "4<|eos|>"


def test_split_common_prefix_for_plain_text_cuts_at_a_word_boundary():
    prompt, chosen, rejected = split_common_prefix("The capital is Paris.", "The capital is Rome.")
    assert (prompt, chosen, rejected) == ("The capital is ", "Paris.", "Rome.")


def test_hh_parser_rejects_text_without_turn_markers():
    from preftune.data import BadRow

    with pytest.raises(BadRow, match="turn marker"):
        hh_to_messages("no markers here")


def test_pointwise_batch_carries_labels_and_a_mismatched_completion(tokenizer):
    rows = [{"prompt": "1+1=", "completion": "2", "label": True},
            {"prompt": "2+2=", "completion": "5", "label": False},
            {"prompt": "3+3=", "completion": "6", "label": True}]
    examples, _ = load_examples(rows)
    batch = collate(Tokenization(tokenizer, 32, 16).many(examples), tokenizer.pad_token_id)
    assert batch.num_responses == 2 and batch.extras["label"].tolist() == [True, False, True]
    texts = [tokenizer.decode(row[mask]) for row, mask in zip(batch.input_ids, batch.response_mask)]
    # Example i's second row is example i+1's completion under example i's prompt (KTO's KL estimate).
    assert texts == ["2<|eos|>", "5<|eos|>", "5<|eos|>", "6<|eos|>", "6<|eos|>", "2<|eos|>"]


def test_kto_mismatched_completion_comes_from_another_prompt_in_an_ordered_batch(tokenizer):
    # Pairs split into unpaired rows sit side by side (prompt 0 desirable, prompt 0 undesirable, ...).
    # In a batch taken in data order (evaluation; training with shuffle: false) the KL reference
    # point must still see completions of OTHER prompts (KTO paper section 4.1, TRL).
    from preftune.data import pairs_to_unpaired

    examples, _ = load_examples(GOOD[:3])
    tokenized = Tokenization(tokenizer, 32, 16).many(pairs_to_unpaired(examples))
    batch = collate(tokenized, tokenizer.pad_token_id)
    completions = [tokenizer.decode(row[mask]) for row, mask in zip(batch.input_ids, batch.response_mask)]
    owner = {f"{text} {i}<|eos|>": i for i in range(3) for text in ("good", "bad")}
    for example in range(batch.num_examples):
        prompt = example // 2
        assert owner[completions[2 * example]] == prompt
        assert owner[completions[2 * example + 1]] != prompt, (example, completions[2 * example + 1])


def test_kto_batch_of_one_prompt_has_an_empty_mismatched_completion(tokenizer):
    # No other prompt in the batch: no KL estimate is possible, so the mismatched completion is empty
    # (log-ratio 0, z0 = 0) rather than the same prompt's other reply.
    from preftune.data import pairs_to_unpaired

    examples, _ = load_examples(GOOD[:1])
    batch = collate(Tokenization(tokenizer, 32, 16).many(pairs_to_unpaired(examples)), tokenizer.pad_token_id)
    assert batch.num_responses == 2
    assert batch.response_mask[1::2].sum() == 0 and batch.response_mask[0::2].sum() > 0


def test_pairs_convert_to_unpaired_rows_for_pointwise_objectives():
    from preftune.data import pairs_to_unpaired

    examples, _ = load_examples(GOOD[:2])
    unpaired = pairs_to_unpaired(examples)
    assert [(e.responses[0], e.label) for e in unpaired] == [("good 0", True), ("bad 0", False),
                                                              ("good 1", True), ("bad 1", False)]


def test_listwise_ranks_become_scores_and_extra_columns_reach_the_batch(tokenizer):
    rows = [{"prompt": "q", "responses": ["a", "b", "c"], "ranks": [2, 1, 3], "margin": 0.5, "gold": "b"}]
    (example,), _ = load_examples(rows, extra_columns=("margin",))
    assert example.scores == [-2.0, -1.0, -3.0] and example.extras == {"margin": 0.5}
    batch = collate(Tokenization(tokenizer, 32, 16).many([example]), tokenizer.pad_token_id)
    assert batch.num_responses == 3
    assert torch.equal(batch.extras["scores"], torch.tensor([[-2.0, -1.0, -3.0]]))
    assert batch.extras["margin"].tolist() == [0.5]
    (with_gold,), _ = load_examples([{"prompt": "q", "chosen": "a", "rejected": "c", "gold": "b"}],
                                    extra_responses=("gold",))
    assert with_gold.responses == ["a", "c", "b"]
    with pytest.raises(DataError, match="field 'margin': must be a number"):
        load_examples([{**GOOD[0], "margin": "big"}], extra_columns=("margin",))


def test_batch_masks_only_response_tokens(tokenizer):
    examples, _ = load_examples(GOOD[:2])
    batch = collate(Tokenization(tokenizer, 32, 16).many(examples), tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 4  # two examples x (chosen, rejected)
    for row, mask, attention in zip(batch.input_ids, batch.response_mask, batch.attention_mask):
        assert not mask[:3].any()  # BOS + "q0" are prompt tokens
        assert (mask <= attention.bool()).all()  # padding is never a response token
        assert tokenizer.decode(row[mask]).endswith("<|eos|>")
