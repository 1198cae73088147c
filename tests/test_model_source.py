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

CUSTOM_CODE = '''from transformers import AutoModel, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny-custom"


class TinyCustomLM(LlamaForCausalLM):
    config_class = TinyCustomConfig


class TinyCustomClassifier(LlamaForSequenceClassification):
    config_class = TinyCustomConfig


class TinyCustomModel(LlamaModel):
    config_class = TinyCustomConfig


# The classifier builds its body with AutoModel.from_config.
AutoModel.register(TinyCustomConfig, TinyCustomModel, exist_ok=True)
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


def pickle_checkpoint(path, model):
    """`path` as older tools wrote it: the config and a pickled state dict, no safetensors."""
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return str(path)


def shipping_code(path, model_type: str, auto_map: dict):
    """Make the saved model at `path` one that ships its own code (custom.py, auto_map in its config)."""
    config = json.loads((path / "config.json").read_text())
    config.update(model_type=model_type, architectures=[auto_map[next(k for k in auto_map if k != "AutoConfig")]
                                                        .split(".")[1]], auto_map=auto_map)
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom.py").write_text(CUSTOM_CODE)
    return str(path)


def tiny_classifier(seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return tokenizer, LlamaForSequenceClassification(config)


def test_pickle_weights_load_only_when_the_config_allows_them(tmp_path):
    model = build_tiny_model(build_tiny_tokenizer(), seed=3)
    path = pickle_checkpoint(tmp_path / "bin", model)
    with pytest.raises(ModelSourceError, match="model.allow_pickle: true"):
        load_causal_lm(path)
    cfg = load_config(None, ["--model.allow_pickle=true"])
    loaded = load_causal_lm(path, **cfg.model.loading)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_the_curriculum_reads_reference_margins_under_the_configs_loading_options(tmp_path):
    from preftune.train.curriculum import reference_margins

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "bin")
    path = pickle_checkpoint(tmp_path / "bin", build_tiny_model(tokenizer, seed=2))
    pairs = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]
    cfg = load_config(None, ["--loss=curry_dpo", f"--model.name_or_path={path}", "--model.allow_pickle=true"])
    assert len(reference_margins(cfg, pairs)) == 1


@pytest.mark.slow
def test_the_quickstart_evaluates_a_users_base_model_under_its_loading_options(tmp_path):
    from preftune.pipeline import load_pipeline_config, run_pipeline

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "bin")
    path = pickle_checkpoint(tmp_path / "bin", build_tiny_model(tokenizer, seed=2))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": "x"}) + "\n"
                            for i in range(4)))
    cfg = load_pipeline_config(None, [f"--base_model={path}", "--skip_sft=true", f"--output_dir={tmp_path}/run",
                                      "--preference.model.allow_pickle=true", f"--preference.data.source={data}",
                                      "--preference.train.steps=1", "--preference.train.batch_size=2",
                                      "--eval.prompts=2", "--eval.samples_per_prompt=1"])
    summary = run_pipeline(cfg, progress=False, log=lambda *_: None)
    assert set(summary) >= {"before", "after"}, summary.keys()


def test_code_shipped_with_a_model_runs_only_when_the_config_trusts_it(tmp_path):
    build_tiny_model(build_tiny_tokenizer()).save_pretrained(tmp_path / "custom")
    path = shipping_code(tmp_path / "custom", "tiny-custom", {"AutoConfig": "custom.TinyCustomConfig",
                                                              "AutoModelForCausalLM": "custom.TinyCustomLM"})
    with pytest.raises(ModelSourceError, match="model.trust_remote_code: true"):
        load_causal_lm(path)
    cfg = load_config(None, ["--model.trust_remote_code=true"])
    assert type(load_causal_lm(path, **cfg.model.loading)).__name__ == "TinyCustomLM"


def test_a_judge_model_loads_safely_unless_its_options_allow_otherwise(tmp_path):
    from preftune.judges import build_judge
    from preftune.train.online_config import load_online_config

    tokenizer, model = tiny_classifier()
    tokenizer.save_pretrained(tmp_path / "bin")
    path = pickle_checkpoint(tmp_path / "bin", model)
    with pytest.raises(ModelSourceError, match="judge.options.allow_pickle: true"):
        build_judge("reward_model", path=path)
    cfg = load_online_config(overrides=["--judge.kind=reward_model", f"--judge.options.path={path}",
                                        "--judge.options.allow_pickle=true"])
    judge = build_judge(cfg.judge.kind, **cfg.judge.options)
    assert torch.equal(judge.model.score.weight, model.score.weight)

    model.save_pretrained(tmp_path / "custom")
    tokenizer.save_pretrained(tmp_path / "custom")
    path = shipping_code(tmp_path / "custom", "tiny-custom", {
        "AutoConfig": "custom.TinyCustomConfig", "AutoModelForSequenceClassification": "custom.TinyCustomClassifier"})
    with pytest.raises(ModelSourceError, match="judge.options.trust_remote_code: true"):
        build_judge("pairwise_model", path=path)
    judge = build_judge("pairwise_model", path=path, trust_remote_code=True)
    assert type(judge.model).__name__ == "TinyCustomClassifier"


def test_commands_that_take_a_model_opt_in_by_flag(tmp_path, capsys):
    from preftune.cli import main
    from preftune.eval.token_credit import main as token_credit

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "bin")
    path = pickle_checkpoint(tmp_path / "bin", build_tiny_model(tokenizer, seed=1))
    generate = ["generate", "--model", path, "--prompt", "1+1=", "--max-new-tokens=2", "--json"]
    assert main(generate) == 2
    err = capsys.readouterr().err.strip()
    assert "--allow-pickle" in err and "\n" not in err, err
    assert main(generate + ["--allow-pickle"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "1+1="
    with pytest.raises(ModelSourceError, match="--allow-pickle"):
        token_credit(["--model", path, "--reference", "builtin:tiny", "--prompt", "1+1=", "--response", "2"])
    for command in (["eval", "--model", path], ["probe", "--model", path, "--data", "task:arithmetic"]):
        assert main(command + ["--prompts=1"] * (command[0] == "eval") + ["--limit=1"] * (command[0] == "probe")) == 2
        assert "--allow-pickle" in capsys.readouterr().err
