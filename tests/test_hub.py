"""The model card a run saves with its model, and `preftune push` (preftune/hub.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from preftune.hub import PushError, command_line, hub_model_id, model_directory, render_card

ROOT = Path(__file__).resolve().parents[1]


def card(base_model="Qwen/Qwen2.5-0.5B-Instruct", source="hf:Anthropic/hh-rlhf"):
    return render_card(title="hh: dpo(beta=0.1)", base_model=base_model, method="dpo(beta=0.1)",
                       hyperparameters={"dpo": {"beta": 0.1}}, training={"steps": 100, "global batch": 64},
                       data={"source": source, "rows read": 1000, "rows skipped (by reason)": {"empty text": 3}},
                       metrics={"train/loss": 0.41234, "eval/accuracy": 0.71, "note": "not a number"},
                       command="preftune train --config r.yaml", config={"name": "hh"}, tags=["dpo"])


def metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_card_has_hub_metadata_and_what_a_reader_needs_to_reproduce_the_model():
    text = card()
    meta = metadata(text)
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct" and meta["datasets"] == ["Anthropic/hh-rlhf"]
    assert meta["library_name"] == "transformers" and {"preftune", "dpo"} <= set(meta["tags"])
    for needed in ("dpo:\n  beta: 0.1", "| global batch | 64 |", "| rows read | 1000 |", '{"empty text": 3}',
                   "| train/loss | 0.4123 |", "| eval/accuracy | 0.71 |", "preftune train --config r.yaml", "name: hh"):
        assert needed in text, needed
    assert "not a number" not in text  # only numbers are metrics


def test_a_local_or_builtin_base_model_is_named_in_the_text_but_not_as_hub_metadata(tmp_path):
    assert hub_model_id("builtin:tiny") is None and hub_model_id(str(tmp_path)) is None
    assert hub_model_id("owner/name") == "owner/name"
    text = card(base_model=str(tmp_path), source="pairs.jsonl")
    assert "base_model" not in metadata(text) and "datasets" not in metadata(text) and str(tmp_path) in text


def test_the_command_is_written_as_the_user_typed_it():
    assert command_line(["/venv/bin/preftune", "train", "--train.lr=1e-5", "--name=a b"]) == \
        "preftune train --train.lr=1e-5 '--name=a b'"
    assert command_line(["/src/preftune/__main__.py", "train"]) == "preftune train"  # python -m preftune, torchrun
    assert command_line(["my_script.py", "--x"]) == "python my_script.py --x"


def test_push_needs_a_saved_model_with_its_card(tmp_path):
    with pytest.raises(PushError, match="holds no saved model"):
        model_directory(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert model_directory(tmp_path) == tmp_path / "model"
    from preftune.hub import push

    with pytest.raises(PushError, match="no model card"):
        push(tmp_path, "owner/name")


def test_push_with_the_hub_out_of_reach_fails_with_a_clear_message(tmp_path):
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "README.md").write_text(card())
    # The Hub client reads HF_ENDPOINT when imported: a fresh process, pointed at a port nothing listens on.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test"}
    done = subprocess.run([sys.executable, "-m", "preftune", "push", str(tmp_path / "run"), "--repo", "me/model"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "preftune push: error: cannot reach the Hugging Face Hub at http://127.0.0.1:9" in done.stderr
    assert f"the model stays in {model}" in done.stderr and "Traceback" not in done.stderr
