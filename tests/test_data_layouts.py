"""The layouts people already have load without hand conversion, tested on real rows copied
under their licenses (tests/data/LICENSE.md): LLaMA-Factory's ShareGPT DPO and KTO files,
UltraFeedback-binarized pairs with scores, and any field names through `data.columns`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from preftune.data import DataError, Tokenization, collate, load_examples
from preftune.models import build_tiny_tokenizer

DATA = Path(__file__).resolve().parent / "data"
DPO_DEMO, KTO_DEMO = DATA / "llamafactory_dpo_en_demo.json", DATA / "llamafactory_kto_en_demo.json"
ULTRAFEEDBACK = DATA / "ultrafeedback_binarized_sample.jsonl"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def as_messages(turns):
    return [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]


def test_llamafactory_sharegpt_dpo_rows_load_as_pairs_with_their_system_message():
    raw = json.loads(DPO_DEMO.read_text())
    for text_format in ("sharegpt", "auto"):  # a `conversations` field is recognised on its own
        examples, report = load_examples(DPO_DEMO, text_format=text_format)
        assert report.rows == report.kept == len(raw) == 4 and not report.unused_columns
        for row, example in zip(raw, examples):
            assert example.kind == "pairwise" and example.prompt == as_messages(row["conversations"])
            assert example.responses == [as_messages([row["chosen"]]), as_messages([row["rejected"]])]
    assert examples[1].prompt[0]["role"] == "system" and [m["role"] for m in examples[2].prompt] == [
        "user", "assistant", "user", "assistant", "user"]
    # Each row starts on the line of its opening brace.
    assert [e.origin for e in examples] == [f"llamafactory_dpo_en_demo.json:{n}" for n in (2, 18, 38, 70)]


def test_sharegpt_replies_as_lists_and_a_top_level_system_field(tmp_path):
    row = json.loads(DPO_DEMO.read_text())[0]
    as_lists = {**row, "chosen": [row["chosen"]], "rejected": [row["rejected"]], "system": "You are terse."}
    (example,), _ = load_examples([as_lists], text_format="sharegpt")
    assert example.prompt == [{"role": "system", "content": "You are terse."}] + as_messages(row["conversations"])
    assert example.responses[0] == as_messages([row["chosen"]])
    tokenizer = build_tiny_tokenizer()
    tokenized = Tokenization(tokenizer, 4096, 2048)(example)
    assert tokenizer.decode(tokenized.prompt_ids).startswith("<|bos|><|system|>You are terse.<|eos|><|user|>Hi!")


def test_llamafactory_kto_rows_are_unpaired_feedback_with_their_labels():
    raw = json.loads(KTO_DEMO.read_text())
    examples, report = load_examples(KTO_DEMO, text_format="sharegpt")
    assert report.kept == len(raw) == 7 and not report.unused_columns
    assert [e.kind for e in examples] == ["pointwise"] * 7
    assert [e.label for e in examples] == [row["label"] for row in raw] and False in [e.label for e in examples]
    for row, example in zip(raw, examples):
        assert example.prompt == row["messages"][:-1] and example.responses == [row["messages"][-1:]]
    again, _ = load_examples(KTO_DEMO)  # messages + label is pointwise under `auto` too
    assert [(e.prompt, e.responses, e.label) for e in again] == [(e.prompt, e.responses, e.label) for e in examples]


def test_every_bad_sharegpt_row_is_named_by_file_line_and_field(tmp_path):
    rows = json.loads(DPO_DEMO.read_text())
    rows[1]["conversations"][1]["from"] = "narrator"
    rows[2]["chosen"] = {"from": "gpt", "value": 7}
    del rows[3]["conversations"][-1]  # ends with a gpt turn: nothing for chosen/rejected to answer
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(rows, indent=2))
    examples, report = load_examples(path, text_format="sharegpt", on_bad_row="skip")
    assert len(examples) == 1
    assert report.first_errors == [
        "demo.json:18: field 'conversations[1]': role 'narrator' is not one of human, user, gpt, assistant, system",
        "demo.json:38: field 'chosen': the turn's text must be a string, got int",
        "demo.json:70: field 'conversations': must end with a user turn, the one chosen and rejected answer"]


def test_ultrafeedback_rows_load_as_pairs_and_their_scores_feed_margin_methods():
    raw = [json.loads(line) for line in ULTRAFEEDBACK.read_text().splitlines()]
    columns = [{"rm_scores": ["score_chosen", "score_rejected"]}]
    examples, report = load_examples(ULTRAFEEDBACK, extra_columns=columns)
    for row, example in zip(raw, examples):
        assert example.prompt == row["chosen"][:1] and example.prompt[0]["content"] == row["prompt"]
        assert example.responses == [row["chosen"][1:], row["rejected"][1:]]
        assert example.extras == {"rm_scores": [row["score_chosen"], row["score_rejected"]]}
    assert report.unused_columns == {"prompt_id": 2, "messages": 1}
    # The scores reach a method that weights pairs by a reward-model margin, with no extra code.
    from preftune.logps import sequence_logps
    from preftune.methods import build_objective
    from preftune.models import build_tiny_model

    tokenizer = build_tiny_tokenizer()
    differing = [{**raw[0], "score_rejected": 6.0}, raw[1]]
    examples, _ = load_examples(differing, extra_columns=columns)
    batch = collate(Tokenization(tokenizer, 256, 128).many(examples), tokenizer.pad_token_id)
    assert batch.extras["rm_scores"].tolist() == [[8.5, 6.0], [8.5, 8.5]]
    model = build_tiny_model(tokenizer).eval()
    with torch.no_grad():
        policy = sequence_logps(model, batch)
    out = build_objective("madpo")(policy, policy, dict(batch.extras))
    assert out.metrics["rm_margin"].tolist() == [2.5, 0.0] and torch.isfinite(out.loss).all()


def test_data_columns_map_other_field_names_and_name_them_in_errors(tmp_path):
    rows = [{"question": "2+2?", "response_j": "4", "response_k": "5", "id": 1},
            {"question": "3+3?", "response_j": "", "response_k": "7", "id": 2}]
    path = tmp_path / "se.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    examples, report = load_examples(path, columns=mapping, on_bad_row="skip")
    assert [(e.prompt, *e.responses) for e in examples] == [("2+2?", "4", "5")]
    assert report.first_errors == ["se.jsonl:2: field 'response_j': empty text"]
    assert report.unused_columns == {"id": 1}
    with pytest.raises(DataError, match="missing field 'response_k'"):
        load_examples([{"question": "q", "response_j": "a"}], columns=mapping)
    with pytest.raises(DataError, match="'answer' is not a conventional field"):
        load_examples(path, columns={"answer": "response_j"})
    sharegpt = {"dialog": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    (demo,), _ = load_examples([sharegpt], text_format="sharegpt", columns={"conversations": "dialog"})
    assert demo.kind == "sft" and demo.responses == [[{"role": "assistant", "content": "hello"}]]
