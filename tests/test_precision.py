"""Mixed precision: 16-bit models train on fp32 master weights, so small updates are not rounded away."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from preftune.models import build_tiny_model, build_tiny_tokenizer
from preftune.train.precision import fp32_master_weights, state_dict_in

ROOT = Path(__file__).resolve().parents[1]


def test_trainable_16_bit_weights_get_fp32_storage_and_frozen_ones_stay():
    from peft import LoraConfig, get_peft_model

    full = build_tiny_model(build_tiny_tokenizer()).to(torch.bfloat16)
    embedding = full.get_input_embeddings().weight
    assert fp32_master_weights(full) == len(list(full.parameters()))
    assert all(p.dtype == torch.float32 for p in full.parameters())
    assert full.get_input_embeddings().weight is embedding  # the same Parameter: optimizers built on it still step it

    lora = get_peft_model(build_tiny_model(build_tiny_tokenizer()).to(torch.bfloat16),
                          LoraConfig(r=4, target_modules="all-linear"), autocast_adapter_dtype=False)
    fp32_master_weights(lora)
    for name, p in lora.named_parameters():
        assert p.dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name


def test_a_state_dict_is_saved_in_the_model_dtype():
    state = state_dict_in({"w": torch.ones(2), "steps": torch.tensor([3])}, torch.bfloat16)
    assert state["w"].dtype == torch.bfloat16 and state["steps"].dtype == torch.int64


def hh_rows(path: Path, n: int = 32) -> Path:
    """Rows in the HH-RLHF layout the recipe reads (format: hh)."""
    rows = [{"chosen": f"\n\nHuman: what is {i} plus {i}?\n\nAssistant: {2 * i}",
             "rejected": f"\n\nHuman: what is {i} plus {i}?\n\nAssistant: {2 * i + 1}, I think"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def displacement_in_bf16(model_dir: Path, initial: dict) -> float:
    """sum |round_bf16(w) - round_bf16(w0)| over every weight of a saved model."""
    from safetensors.torch import load_file

    trained = load_file(str(model_dir / "model.safetensors"))
    return sum(float((trained[k].to(torch.bfloat16).float() - initial[k].float()).abs().sum()) for k in initial)


@pytest.mark.slow
def test_the_bf16_recipe_moves_the_weights_as_far_as_fp32_weights_under_bf16_autocast(tmp_path):
    """configs/hf/dpo_hh_rlhf.yaml (model.dtype bfloat16, precision bf16, lr 5e-7) against the same recipe
    with fp32 weights: after a few steps, with both rounded to bf16, the weights have moved as far.
    Stepping the bf16 weights themselves rounds about 99% of AdamW's updates away."""
    from safetensors.torch import load_file

    from preftune.config import load_config
    from preftune.train.runner import run_training

    tokenizer = build_tiny_tokenizer()
    start = tmp_path / "start"  # bf16 weights, so both runs start from the very same values
    build_tiny_model(tokenizer).to(torch.bfloat16).save_pretrained(start)
    tokenizer.save_pretrained(start)
    initial = load_file(str(start / "model.safetensors"))
    data = hh_rows(tmp_path / "hh.jsonl")
    moved, runs = {}, {}
    for dtype in ("bfloat16", "float32"):
        cfg = load_config(ROOT / "configs" / "hf" / "dpo_hh_rlhf.yaml", [
            f"--model.name_or_path={start}", f"--model.dtype={dtype}", f"--data.source={data}",
            "--data.max_length=48", "--data.max_prompt_length=32", "--data.eval_fraction=0", "--train.steps=4",
            "--train.grad_accum=1", "--train.checkpoint_every=0", "--train.progress=false",
            f"--output_dir={tmp_path}/{dtype}"])
        assert cfg.train.precision == "bf16" and cfg.train.lr == 5e-7  # the recipe's own settings
        runs[dtype] = run_training(cfg)
        moved[dtype] = displacement_in_bf16(runs[dtype] / "model", initial)
    assert moved["float32"] > 0
    assert moved["bfloat16"] == pytest.approx(moved["float32"], rel=0.1)
    # The saved model says what it holds: the bf16 run is saved in bf16, the fp32 one in fp32.
    for dtype, run_dir in runs.items():
        config = json.loads((run_dir / "model" / "config.json").read_text())
        saved = load_file(str(run_dir / "model" / "model.safetensors"))
        assert config["dtype"] == dtype and {str(t.dtype) for t in saved.values()} == {f"torch.{dtype}"}
        summary = json.loads((run_dir / "train_summary.json").read_text())
        assert summary["precision"] == {"model_dtype": dtype, "master_weights": "float32", "autocast": "bf16",
                                        "saved_dtype": dtype}


def test_a_run_that_died_does_not_fix_the_precision_of_the_next(tmp_path):
    """accelerate keeps one process-wide state; a run that ended in an error without releasing it
    made the next bf16 run in the process fail ('AcceleratorState has already been initialized')."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    from preftune.train.loop import make_accelerator, release_accelerator

    Accelerator(mixed_precision="no", cpu=True)  # what a dead fp32 run leaves behind
    cfg = SimpleNamespace(train=SimpleNamespace(precision="bf16", grad_accum=1, report_to=[]), run_dir=tmp_path)
    try:
        assert make_accelerator(cfg).mixed_precision == "bf16"
    finally:
        release_accelerator()
