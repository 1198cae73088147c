"""Config values are checked when the config is read, each error naming the key and what it allows."""
from __future__ import annotations

import pytest

from preftune.config import ConfigError, load_config
from preftune.train.online_config import load_online_config


@pytest.mark.parametrize("overrides, message", [
    (["--loss.dpo.beta=0"], "loss.dpo.beta must be > 0, got 0"),
    (["--loss=kto", "--loss.kto.beta=-0.1"], "loss.kto.beta must be > 0, got -0.1"),
    (["--loss=cdpo", "--loss.cdpo.label_smoothing=0.5"], "loss.cdpo.label_smoothing must be in [0, 0.5), got 0.5"),
    (["--train.steps=0"], "train.steps must be >= 1"),
    (["--train.batch_size=-2"], "train.batch_size must be >= 1, got -2"),
    (["--data.max_length=0"], "data.max_length must be >= 2, got 0"),
    (["--data.max_length=64", "--data.max_prompt_length=64"], "data.max_prompt_length (64) must be below data.max_length (64)"),
    (["--train.lr=fast"], "train.lr must be float, got 'fast'"),
    (["--loss.dpo.beta=abc"], "loss.dpo.beta must be a number, got 'abc'"),
    (["--loss.dpo.beta=true"], "loss.dpo.beta must be a number, got True"),
    (["--data.on_bad_row=ignore"], "data.on_bad_row must be error or skip, got 'ignore'"),
    (["--data.columns.answer=response_j"], "'answer' is not a conventional field"),
])
def test_bad_values_fail_when_the_config_is_read_naming_the_key_and_the_range(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_a_recipe_is_checked_when_read_not_when_training_starts(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss:\n  kto: {beta: 0}\ntrain: {steps: 5}\n")
    with pytest.raises(ConfigError, match=r"loss.kto.beta must be > 0, got 0"):
        load_config(recipe)


@pytest.mark.parametrize("overrides", [["--loss=simpo", "--loss.simpo.gamma=-5"], ["--loss.simpo.gamma=-5", "--loss=simpo"]])
def test_a_hyperparameter_is_never_dropped_or_kept_by_the_order_of_overrides(overrides):
    # simpo's margin is gamma_beta_ratio: 'gamma' is an error whichever order the overrides come in.
    with pytest.raises(ConfigError, match="method 'simpo' has no hyperparameter 'gamma'; valid hyperparameters"):
        load_config(None, overrides)
    assert load_config(None, ["--loss.simpo.beta=3", "--loss=simpo"]).loss == {"simpo": {"beta": 3}}


def test_a_hyperparameter_of_a_method_not_in_loss_is_an_error_not_a_new_term():
    with pytest.raises(ConfigError, match=r"--loss.simpo.beta sets a hyperparameter of simpo, which is not in loss \(dpo\)"):
        load_config(None, ["--loss.simpo.beta=3"])
    with pytest.raises(ConfigError, match="not in loss"):
        load_config(None, ["--loss=dpo + 0.2*sft", "--loss.ipo.beta=0.5"])
    assert load_config(None, ["--loss=dpo + 0.2*sft", "--loss.dpo.beta=0.5"]).loss == {"dpo": {"beta": 0.5},
                                                                                         "sft": {"weight": 0.2}}


def test_broken_yaml_names_the_file_and_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("name: x\ntrain:\n  steps: 5\n  lr: [1e-4\nloss: dpo\n")
    with pytest.raises(ConfigError) as error:
        load_config(recipe)
    assert str(error.value).startswith(f"{recipe}:5:") and "not valid YAML" in str(error.value)


def test_misspelt_judge_options_list_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        load_online_config(None, ["--judge.kind=llm", "--judge.options.bse_url=http://localhost:8000/v1"])
    assert "judge.options.bse_url is not an option of the llm judge; valid options: base_url, api_key" in str(error.value)
    with pytest.raises(ConfigError, match="judge.options.pth is not an option of the reward_model judge; valid options: "
                                          "path, device, batch_size, max_length"):
        load_online_config(None, ["--judge.kind=reward_model", "--judge.options.pth=/models/rm"])
    with pytest.raises(ConfigError, match="judge.kind must be one of task, reward_model, pairwise_model, llm"):
        load_online_config(None, ["--judge.kind=gpt"])
    with pytest.raises(ConfigError, match="sampler.temperature must be > 0"):
        load_online_config(None, ["--sampler.temperature=0"])
    with pytest.raises(ConfigError, match=r"judge.max_failure_rate must be in \[0, 1\], got 1.5"):
        load_online_config(None, ["--judge.max_failure_rate=1.5"])


def test_the_missing_base_url_message_names_the_key_that_exists(monkeypatch):
    from preftune.judges.llm import LLMJudge

    for variable in ("PREFTUNE_JUDGE_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match=r"judge\.options\.base_url"):
        LLMJudge()
    cfg = load_online_config(None, ["--judge.kind=llm", "--judge.options.base_url=http://localhost:8000/v1"])
    assert cfg.judge.options == {"base_url": "http://localhost:8000/v1"}


def test_every_shipped_recipe_passes_the_checks():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    for recipe in sorted((configs / "methods").glob("*.yaml")) + sorted((configs / "hf").glob("*.yaml")):
        load_config(recipe)
    for recipe in sorted((configs / "online").glob("*.yaml")):
        load_online_config(recipe)
