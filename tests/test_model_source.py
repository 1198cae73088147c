"""Loading a model is safe by default and fails fast: safetensors only unless model.allow_pickle,
no code shipped with a model unless model.trust_remote_code, and a hub id that cannot be fetched
stops within seconds with one line."""
from __future__ import annotations

import json
import time

import pytest
import torch

from preftune.config import load_config
from preftune.model_source import ModelSourceError
from preftune.models import build_tiny_model, build_tiny_tokenizer, load_causal_lm, load_tokenizer

CUSTOM_CODE = '''from transformers import LlamaConfig, LlamaForCausalLM


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny-custom"


class TinyCustomLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path


def test_a_hub_id_under_hf_hub_offline_fails_at_once_with_one_line(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(FileNotFoundError) as error:
            load("nobody-here/no-such-model")
        message = str(error.value)
        assert "HF_HUB_OFFLINE" in message and "--model.name_or_path=DIR" in message and "\n" not in message


def test_a_hub_that_cannot_be_reached_fails_within_seconds(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(ModelSourceError, match="cannot be fetched from the Hugging Face hub"):
        load_causal_lm("nobody-here/no-such-model")
    assert time.perf_counter() - started < 30  # transformers alone retries for more than a minute


def test_the_cli_reports_an_unfetchable_model_in_one_line(empty_hub_cache, monkeypatch, capsys, tmp_path):
    from preftune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    code = main(["train", "--model.name_or_path=nobody-here/no-such-model", f"--data.source={data}",
                 f"--output_dir={tmp_path}/run", "--train.steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "HF_HUB_OFFLINE" in err, err


def test_pickle_weights_load_only_when_the_config_allows_them(tmp_path):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=3)
    model.config.save_pretrained(tmp_path / "bin")  # a checkpoint of older tools: a pickled state dict
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match="model.allow_pickle: true"):
        load_causal_lm(str(tmp_path / "bin"))
    cfg = load_config(None, ["--model.allow_pickle=true"])
    loaded = load_causal_lm(str(tmp_path / "bin"), **cfg.model.loading)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_code_shipped_with_a_model_runs_only_when_the_config_trusts_it(tmp_path):
    tokenizer = build_tiny_tokenizer()
    path = tmp_path / "custom"
    build_tiny_model(tokenizer).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="tiny-custom", architectures=["TinyCustomLM"],
                  auto_map={"AutoConfig": "custom.TinyCustomConfig", "AutoModelForCausalLM": "custom.TinyCustomLM"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom.py").write_text(CUSTOM_CODE)
    with pytest.raises(ModelSourceError, match="model.trust_remote_code: true"):
        load_causal_lm(str(path))
    cfg = load_config(None, ["--model.trust_remote_code=true"])
    assert type(load_causal_lm(str(path), **cfg.model.loading)).__name__ == "TinyCustomLM"
