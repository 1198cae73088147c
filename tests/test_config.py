"""Typed configuration: unknown keys and wrong types are errors that help."""
from __future__ import annotations

from pathlib import Path

import pytest

from preftune.config import ConfigError, load_config, valid_keys

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_unknown_key_lists_the_valid_keys_of_its_section():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["--train.lrr=0.1"])
    message = str(error.value)
    assert message.startswith("unknown key 'train.lrr'; valid keys under 'train': steps, epochs, batch_size")
    assert "lr," in message


def test_unknown_top_level_key_lists_the_sections():
    with pytest.raises(ConfigError, match="unknown key 'optimizer'; valid keys: name, output_dir, model"):
        load_config(None, ["--optimizer=adam"])


@pytest.mark.parametrize("override, message", [
    ("--train.lr=fast", "train.lr must be float, got 'fast' (str)"),
    ("--train.steps=1.5", "train.steps must be int or null, got 1.5 (float)"),
    ("--train.progress=3", "train.progress must be bool, got 3 (int)"),
    ("--data.extra_columns=margin", "data.extra_columns must be list of str or mapping, got 'margin' (str)"),
])
def test_wrong_types_name_the_key_and_the_expected_type(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_overrides_are_typed_and_reach_nested_sections(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: dpo\ntrain: {lr: 1.0e-6}\n")
    cfg = load_config(recipe, ["--train.lr=1e-4", "--loss.dpo.beta=0.3", "--model.lora.enabled=true",
                               "--data.extra_columns=[a, b]"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.loss == {"dpo": {"beta": 0.3}}
    assert cfg.model.lora.enabled is True and cfg.data.extra_columns == ["a", "b"]


def test_a_recipe_that_is_not_a_mapping_is_rejected(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(recipe)


def test_quickstart_recipe_spells_out_the_built_in_defaults():
    from preftune.config import to_dict
    from preftune.pipeline import PipelineConfig, load_pipeline_config

    assert to_dict(load_pipeline_config(CONFIGS / "quickstart.yaml")) == to_dict(PipelineConfig())


def test_every_yaml_recipe_in_configs_is_valid():
    from preftune.pipeline import load_pipeline_config

    for path in sorted(CONFIGS.rglob("*.yaml")):
        if path.name == "quickstart.yaml":
            load_pipeline_config(path)
        elif path.parent.name == "bench":  # `preftune bench` configs (preftune/bench/)
            from preftune.bench import load_bench_config

            load_bench_config(path)
        elif path.parent.name == "rl":  # `preftune rl` recipes (preftune/rl/config.py)
            from preftune.rl.config import load_rl_config

            load_rl_config(path)
        elif path.parent.name == "diffusion":  # `preftune diffusion train` recipes (preftune/diffusion/config.py)
            from preftune.diffusion.config import load_diffusion_config

            load_diffusion_config(path)
        elif path.parent.name == "claims":  # `preftune claims` configs (preftune/claims/)
            from preftune.claims.config import load_claims_config

            load_claims_config(path)
        elif path.parent.name not in ("online", "accelerate"):  # online recipes have their own schema and test;
            load_config(path)                                         # accelerate configs: tests/test_distributed.py


def test_valid_keys_cover_nested_sections():
    keys = valid_keys()
    assert {"train.lr", "model.lora.r", "data.task.noise", "loss", "aux_models"} <= set(keys)
