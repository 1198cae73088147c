"""The diffusion loop's weights and stops work as the language loop's (train/precision.py, checkpoint.StopRequests).

A network loaded in bf16 is stepped through fp32 master weights and saved in bf16 again, its frozen
reference stays bf16; a signal within a step finishes that step, saves it, and --resume is exact.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusion_helpers import quick_toy
from preftune.diffusion.config import load_diffusion_config
from preftune.diffusion.train import train_diffusion
from preftune.train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--train.batch_size=8", "--train.checkpoint_every=0", "--eval.samples=16", "--eval.every=0", "--eval.steps=2",
         "--eval.grid=8", "--data.toy.prompts=48", "--data.toy.steps=3", "--train.progress=false"]


def recipe(base: Path, out: Path, *extra: str):
    return load_diffusion_config(REPO / "configs" / "diffusion" / "diffusion_dpo.yaml",
                                 [f"--model.name_or_path={base}", f"--output_dir={out}/{{name}}", *QUIET, *extra])


def saved_weights(model_dir: Path, component: str = "denoiser") -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / component / "diffusion_pytorch_model.safetensors"))


def denoiser(run_dir: Path) -> dict:
    return saved_weights(run_dir / "model")


@pytest.fixture(scope="module")
def bf16_toy(tmp_path_factory):
    """The quick gmm toy with its weights rounded to bf16 and saved so, the start of both runs below."""
    from preftune.diffusion.models import load_diffusion_model, save_network

    root = tmp_path_factory.mktemp("bf16-toy")
    model = load_diffusion_model(str(quick_toy(root, "gmm")), torch.bfloat16)
    return save_network(model, model.network, root / "gmm-bf16")


def test_a_bf16_network_moves_as_far_as_fp32_weights_and_is_saved_in_bf16(bf16_toy, tmp_path):
    """lr 1e-4 moves a weight by about 1e-4 a step, below half a bf16 ulp of most weights (|w| = 0.1 has an
    ulp of 4.9e-4): stepped in bf16 they would round back. With fp32 master weights the bf16 run ends
    where the fp32 run ends, both rounded to bf16."""
    start = saved_weights(bf16_toy)
    runs = {dtype: train_diffusion(recipe(bf16_toy, tmp_path, f"--name={dtype}", f"--model.dtype={dtype}",
                                          "--train.steps=4", "--train.lr=1e-4", "--train.precision=fp32"))
            for dtype in ("bfloat16", "float32")}
    weights = {dtype: denoiser(run) for dtype, run in runs.items()}
    assert {v.dtype for v in weights["bfloat16"].values()} == {torch.bfloat16}
    assert {v.dtype for v in weights["float32"].values()} == {torch.float32}

    def moved(state):
        return sum(float((state[k].to(torch.bfloat16).float() - start[k].float()).abs().sum()) for k in start)

    assert moved(weights["float32"]) > 0
    assert moved(weights["bfloat16"]) == pytest.approx(moved(weights["float32"]), rel=0.1)
    summary = json.loads((runs["bfloat16"] / "diffusion_summary.json").read_text())
    assert summary["precision"] == {"model_dtype": "bfloat16", "master_weights": "float32", "autocast": "fp32",
                                    "saved_dtype": "bfloat16"}


def test_a_signal_within_a_step_finishes_it_saves_it_and_resume_is_exact(bf16_toy, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while step 3 builds its records: step 3 is finished and saved, the run raises with
    exit code 130 or 143, and --resume ends bit-identical to the uninterrupted run (bf16 weights, so the
    fp32 master weights must be what the checkpoint holds)."""
    from preftune.diffusion import train as loop

    handlers_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    args = ("--model.dtype=bfloat16", "--train.steps=5", "--train.lr=1e-4")
    straight = train_diffusion(recipe(bf16_toy, tmp_path, "--name=straight", *args))
    build = loop.build_records
    for signum in (signal.SIGINT, signal.SIGTERM):
        calls = []

        def signal_within_step_3(*arguments, **options):
            calls.append(1)
            if len(calls) == 3:  # one micro-batch a step: call 3 is step 3
                os.kill(os.getpid(), signum)
            return build(*arguments, **options)

        monkeypatch.setattr(loop, "build_records", signal_within_step_3)
        cfg = recipe(bf16_toy, tmp_path, f"--name=stopped-{signum}", *args)
        with pytest.raises(KeyboardInterrupt) as stopped:
            train_diffusion(cfg)
        saved = [p.name for p in list_checkpoints(cfg.run_dir)]
        monkeypatch.undo()
        resumed = train_diffusion(cfg, resume=True)
        assert saved == ["step-0000003"] and stopped.value.exit_code == 128 + signum
        a, b = denoiser(straight), denoiser(resumed)
        assert all(torch.equal(a[k], b[k]) for k in a), signum
        losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                   if "loss" in json.loads(line)] for run in (straight, resumed)]
        assert losses[0] == losses[1] and len(losses[0]) == 5
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers_before


@pytest.mark.slow
def test_a_bf16_pipeline_trains_on_fp32_master_weights_and_saves_in_bf16(tmp_path):
    """A tiny Stable Diffusion pipeline in bf16 (text encoder, VAE and UNet), trained without autocast: the
    bf16 caption embeddings meet the fp32 master weights (inputs are cast to the network's dtype), the
    frozen bf16 reference gets bf16 inputs, and the saved UNet is bf16 and has moved."""
    from diffusion_helpers import write_image_data

    from preftune.diffusion.models import load_diffusion_model
    from preftune.diffusion.tiny import save_tiny_pipeline

    pipeline = save_tiny_pipeline(tmp_path / "sd", "sd")
    data = write_image_data(tmp_path / "data", "image-pairs")
    cfg = load_diffusion_config(REPO / "configs" / "diffusion" / "diffusion_dpo.yaml", [
        f"--model.name_or_path={pipeline}", f"--output_dir={tmp_path}/{{name}}", f"--data.source={data}",
        "--reward=brightness", "--model.dtype=bfloat16", "--train.precision=fp32", "--train.steps=2",
        "--train.batch_size=2", "--train.lr=1e-3", "--train.checkpoint_every=0", "--eval.samples=2", "--eval.steps=2",
        "--data.eval_fraction=0", "--train.progress=false"])
    run = train_diffusion(cfg)
    base, tuned = saved_weights(pipeline, "unet"), saved_weights(run / "model", "unet")
    assert {v.dtype for v in tuned.values()} == {torch.bfloat16}
    assert any(not torch.equal(base[k].to(torch.bfloat16), v) for k, v in tuned.items())
    reloaded = load_diffusion_model(str(run / "model"), torch.bfloat16)  # loads as saved, without a warning
    assert {p.dtype for p in reloaded.network.parameters()} == {torch.bfloat16}
    assert json.loads((run / "diffusion_summary.json").read_text())["precision"]["master_weights"] == "float32"
