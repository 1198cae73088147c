"""`preftune diffusion train`: every recipe trains, resume is exact, modules move, diffusers pipelines sample.

End-to-end runs are marked slow (they still run in `make test`) and kept to a few steps on quick toys
(tests/diffusion_helpers.py) and on tiny random diffusers pipelines built offline.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("diffusers")

from diffusion_helpers import quick_toy, write_image_data
from preftune.diffusion.config import load_diffusion_config
from preftune.diffusion.train import train_diffusion

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (REPO / "configs" / "diffusion").glob("*.yaml"))
SMALL = ["--train.steps=3", "--train.batch_size=8", "--train.checkpoint_every=0", "--eval.samples=32", "--eval.every=0",
         "--eval.steps=3", "--eval.grid=8", "--data.toy.prompts=48", "--data.toy.positives=24", "--data.toy.steps=3",
         "--data.toy.label=reward", "--rollout.prompts=4", "--rollout.steps=3", "--rollout.sync_every=2",
         "--train.progress=false"]


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    return tmp_path_factory.mktemp("toys")


def recipe_base(recipe: str) -> str:
    return yaml.safe_load((REPO / "configs" / "diffusion" / f"{recipe}.yaml").read_text())["model"]["name_or_path"]


def config(recipe: str, tmp_path: Path, toys: Path, *extra: str):
    base = quick_toy(toys, recipe_base(recipe).removeprefix("builtin:toy-"))
    return load_diffusion_config(REPO / "configs" / "diffusion" / f"{recipe}.yaml",
                                 [f"--model.name_or_path={base}", f"--output_dir={tmp_path}/{{name}}", *SMALL, *extra])


def network_state(model_dir: Path) -> dict:
    from preftune.diffusion.models import load_diffusion_model

    return {k: v.clone() for k, v in load_diffusion_model(str(model_dir)).network.state_dict().items()}


def test_every_method_has_a_recipe():
    from preftune.methods import all_methods

    assert {s.name for s in all_methods() if s.family == "diffusion"} <= set(RECIPES)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_a_toy_model_and_moves_it(recipe, tmp_path, toys):
    cfg = config(recipe, tmp_path, toys)
    run = train_diffusion(cfg)
    summary = json.loads((run / "diffusion_summary.json").read_text())
    assert summary["steps"] == 3 and "eval/reward" in summary["eval"] and "eval/reward" in summary["initial_eval"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    assert (run / "samples" / "step-0000003.png").exists()
    # The network moved: every trained model differs from its base.
    base, tuned = network_state(Path(cfg.model.name_or_path)), network_state(run / "model")
    assert any(not torch.equal(base[k], tuned[k]) for k in base), f"{recipe}: no parameter changed"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["diffusion_dpo", "diffusion_dro", "d3po", "awm"])
def test_interrupted_and_resumed_equals_uninterrupted(recipe, tmp_path, toys):
    whole = train_diffusion(config(recipe, tmp_path / "whole", toys, "--train.steps=4"))

    def stop_after_two(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    cut = config(recipe, tmp_path / "cut", toys, "--train.steps=4", "--train.checkpoint_every=0")
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cut, on_step_end=stop_after_two)
    resumed = train_diffusion(cut, resume=True)
    a, b = network_state(whole / "model"), network_state(resumed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a), f"{recipe}: resumed run differs from the uninterrupted one"
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_lora_run_keeps_the_base_and_uses_it_as_reference(tmp_path, toys):
    cfg = config("diffusion_dpo", tmp_path, toys, "--model.lora.enabled=true", "--model.lora.r=4",
                 "--train.lr=1e-2")
    run = train_diffusion(cfg)
    summary = json.loads((run / "diffusion_summary.json").read_text())
    assert summary["reference"] == "lora-disabled"
    base, tuned = network_state(Path(cfg.model.name_or_path)), network_state(run / "model")
    assert set(base) == set(tuned)   # adapters merged into plain weights: a diffusers model again
    assert any(not torch.equal(base[k], tuned[k]) for k in base)


# Each recipe on a tiny random diffusers pipeline: eps methods on Stable Diffusion (UNet2DConditionModel),
# flow methods on SD3 (SD3Transformer2DModel), DenseDPO on a text-to-video UNet3DConditionModel.
PIPELINE_CASES = {"diffusion_dpo": ("sd", "image-pairs"), "smpo": ("sd", "image-pairs"), "rankdpo": ("sd", "image-lists"),
                  "ddo": ("sd", "unpaired"), "cpo": ("sd", "condition-pairs"), "diffusion_dro": ("sd", "unpaired"),
                  "d3po": ("sd", "prompts"), "dso_dro": ("sd3", "unpaired"), "awm": ("sd3", "prompts"),
                  "ddpo": ("sd3", "prompts"), "flow_grpo": ("sd3", "prompts"), "dense_dpo": ("video", "segment-pairs")}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    from preftune.diffusion.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    return {kind: save_tiny_pipeline(root / kind, kind) for kind in ("sd", "sd3", "video")}


def test_every_recipe_has_a_pipeline_case():
    assert set(PIPELINE_CASES) == set(RECIPES)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(PIPELINE_CASES))
def test_recipe_trains_a_tiny_diffusers_pipeline_that_then_samples(recipe, tmp_path, pipelines):
    import diffusers

    kind, data_kind = PIPELINE_CASES[recipe]
    data = write_image_data(tmp_path / "data", data_kind)
    cfg = load_diffusion_config(REPO / "configs" / "diffusion" / f"{recipe}.yaml",
                                [f"--model.name_or_path={pipelines[kind]}", f"--output_dir={tmp_path}/{{name}}",
                                 f"--data.source={data}", "--reward=brightness", "--train.steps=2",
                                 "--train.batch_size=2", "--train.checkpoint_every=0", "--eval.samples=4",
                                 "--eval.steps=2", "--rollout.prompts=2", "--rollout.group_size=2", "--rollout.steps=2",
                                 "--data.eval_fraction=0", "--train.progress=false",
                                 *(["--model.frames=2"] if kind == "video" else [])])
    run = train_diffusion(cfg)
    index = json.loads((run / "model" / "model_index.json").read_text())
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v and v[0] is None}
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(run / "model"), **absent)
    component = "transformer" if kind == "sd3" else "unet"
    base = getattr(diffusers.DiffusionPipeline.from_pretrained(str(pipelines[kind]), **absent), component).state_dict()
    tuned = getattr(pipe, component).state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base), f"{recipe}: the pipeline's network did not move"
    video = {"num_frames": 2} if kind == "video" else {}
    out = pipe("a red circle", num_inference_steps=2, height=16, width=16, output_type="np",
               generator=torch.Generator().manual_seed(0), **video)
    images = out.frames if kind == "video" else out.images
    assert images.shape[-3:] == (16, 16, 3) and float(abs(images).sum()) > 0


@pytest.mark.slow
def test_toy_b_digits_trains_on_its_classifier_reward(tmp_path, toys):
    """Toy B: 8x8 digits, class-conditional, log p_clf(c | x) as the reward (an image-shaped toy)."""
    cfg = load_diffusion_config(REPO / "configs" / "diffusion" / "diffusion_dpo.yaml",
                                [f"--model.name_or_path={quick_toy(toys, 'digits')}", f"--output_dir={tmp_path}/{{name}}",
                                 *SMALL])
    run = train_diffusion(cfg)
    summary = json.loads((run / "diffusion_summary.json").read_text())
    assert summary["reward"] == "toy:digits" and summary["eval"]["eval/reward"] <= 0   # a log-probability
    assert 0 <= summary["eval"]["eval/target_fraction"] <= 1
    assert (run / "samples" / "step-0000003.png").exists()
