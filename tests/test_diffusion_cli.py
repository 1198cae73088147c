"""`preftune diffusion train|sample|eval`, the report of a diffusion run, and the cost of the CLI for LM users."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusion_helpers import quick_toy
from preftune.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_the_cli_and_the_registry_do_not_import_diffusers():
    # Language-model users never pay for diffusers: building the parser and listing methods stay light.
    code = ("import sys; from preftune.cli import build_parser; build_parser(); import preftune.methods; "
            "print(any(m == 'diffusers' or m.startswith('diffusers.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("argv, expected", [
    (["diffusion", "--help"], "train"),
    (["diffusion", "train", "--help"], "loss"),
    (["diffusion", "sample", "--help"], "--guidance"),
    (["diffusion", "eval", "--help"], "--reference"),
])
def test_help(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and expected in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["diffusion", "train", "--config", str(REPO / "configs/diffusion/diffusion_dpo.yaml"),
                 "--loss=dpo"]) == 2
    assert "trains diffusion methods; dpo is not" in capsys.readouterr().err
    assert main(["diffusion", "train", "--config", str(REPO / "configs/diffusion/diffusion_dpo.yaml"),
                 "--train.nonsense=1"]) == 2
    assert "unknown key 'train.nonsense'" in capsys.readouterr().err
    assert main(["diffusion", "sample", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.slow
def test_train_sample_eval_and_report(tmp_path, capsys):
    toy = quick_toy(tmp_path / "toys", "gmm")
    overrides = [f"--model.name_or_path={toy}", f"--output_dir={tmp_path}/{{name}}", "--train.steps=2",
                 "--train.batch_size=8", "--data.toy.prompts=32", "--data.toy.steps=3", "--eval.samples=32",
                 "--eval.steps=3", "--train.checkpoint_every=1", "--train.progress=false"]
    config = str(REPO / "configs/diffusion/diffusion_dpo.yaml")
    assert main(["diffusion", "train", "--config", config, *overrides]) == 0
    out = capsys.readouterr().out
    assert "trained diffusion_dpo" in out and "target_fraction" in out
    run = tmp_path / "diffusion_dpo"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    assert main(["diffusion", "train", "--config", config, *overrides, "--train.steps=3", "--resume"]) == 0
    assert main(["diffusion", "sample", "--model", str(run / "model"), "-n", "8", "--steps", "3",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "grid.pt").exists()
    capsys.readouterr()
    assert main(["diffusion", "eval", "--config", config, *overrides, "--json"]) == 0
    report = json.loads(_last_json(capsys))
    assert "eval/kl_proxy" in report["metrics"] and "eval/reward" in report["reference_metrics"]
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Diffusion: diffusion_dpo" in page and page.count("data:image/png;base64") >= 2


def _last_json(capsys) -> str:
    text = capsys.readouterr().out
    return text[text.index("{"):]


def test_pickle_weights_load_only_when_allowed(tmp_path):
    """As for language models, .bin weights (a pickle can run code) need model.allow_pickle."""
    import shutil

    from preftune.diffusion.models import load_diffusion_model

    toy = quick_toy(tmp_path / "toys", "gmm")
    pickled = tmp_path / "pickled"
    shutil.copytree(toy, pickled)
    network = load_diffusion_model(str(toy)).network
    for weights in (pickled / "denoiser").glob("*.safetensors"):
        weights.unlink()
    network.save_pretrained(pickled / "denoiser", safe_serialization=False)
    assert not any((pickled / "denoiser").glob("*.safetensors"))
    with pytest.raises(ValueError, match="model.allow_pickle: true"):
        load_diffusion_model(str(pickled))
    loaded = load_diffusion_model(str(pickled), allow_pickle=True).network
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), network.state_dict().values()))
