"""Models are loaded by path through the same code real Hugging Face models take."""
from __future__ import annotations

import json

import pytest
import torch

from preftune.models import (build_tiny_tokenizer, load_causal_lm, load_tokenizer, make_reference,
                             save_tiny_model)


def test_the_tiny_model_round_trips_through_save_pretrained(tmp_path):
    path = save_tiny_model(tmp_path / "tiny", seed=3)
    model, tokenizer = load_causal_lm(str(path)), load_tokenizer(str(path))
    again = load_causal_lm(str(path))
    ids = tokenizer(["12+30="], return_tensors="pt")["input_ids"]
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert type(model).__name__ == "LlamaForCausalLM" and json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert tokenizer.decode(tokenizer("héllo ✓")["input_ids"], skip_special_tokens=True) == "héllo ✓"


def test_another_architecture_saved_locally_loads_and_trains_by_path(tmp_path):
    """A GPT-2-style model and a tokenizer saved with save_pretrained go through AutoModel by path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from preftune.config import load_config
    from preftune.train.runner import run_training

    tokenizer = build_tiny_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    rows = [{"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)} for a in range(8)]
    cfg = load_config(None, [f"--output_dir={tmp_path}/{{name}}", f"--model.name_or_path={tmp_path / 'gpt2'}",
                             "--train.steps=2", "--train.batch_size=4", "--train.lr=1e-3", "--train.progress=false"])
    run_dir = run_training(cfg, data_source=rows)
    assert type(load_causal_lm(str(run_dir / "model"))).__name__ == "GPT2LMHeadModel"


def test_a_missing_model_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a hub id"):
        load_causal_lm("no-such-model-dir")


def test_reference_follows_the_objective_and_the_config(tmp_path):
    path = save_tiny_model(tmp_path / "tiny")
    policy = load_causal_lm(str(path))
    assert make_reference("auto", policy, str(path), "float32", needs_reference=False).kind == "none"
    frozen = make_reference("auto", policy, str(path), "float32", needs_reference=True)
    assert frozen.kind == "model" and frozen.frozen is not policy
    assert not any(p.requires_grad for p in frozen.frozen.parameters())
    with pytest.raises(ValueError, match="needs a reference model but reference: none"):
        make_reference("none", policy, str(path), "float32", needs_reference=True)
    with pytest.raises(ValueError, match="needs a LoRA policy"):
        make_reference("lora-disabled", policy, str(path), "float32", needs_reference=True)
