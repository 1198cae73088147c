"""The image data layer and the rewards: layouts, file:line errors, datasets image columns, CLIP from a local path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusion_helpers import write_image_data, write_png
from preftune.data.formats import DataError
from preftune.diffusion.data import load_examples
from preftune.diffusion.offline import lists_to_pairs, pair_unpaired
from preftune.diffusion.rewards import build_reward


def test_pick_a_pic_pairs_put_the_preferred_image_first_and_skip_ties(tmp_path):
    path = write_image_data(tmp_path, "image-pairs", rows=4)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows.append({**rows[0], "label_0": 0.5})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, report = load_examples(path, "image-pairs")
    assert len(examples) == 4 and report.skipped["tie (label 0.5)"] == 1
    for ex in examples:
        first, second = (ex.samples[i].load((3, 16, 16)) for i in (0, 1))
        assert first.mean() > second.mean()          # the bright image is the preferred one
        assert ex.scores[0] > ex.scores[1]
        assert first.min() >= -1 and first.max() <= 1


def test_lists_unpaired_and_condition_pairs(tmp_path):
    lists, _ = load_examples(write_image_data(tmp_path, "image-lists", 3), "image-lists")
    assert [len(ex.samples) for ex in lists] == [3, 3, 3] and lists[0].scores == [0.2, 0.8, 0.5]
    pairs = lists_to_pairs(lists)
    assert pairs[0].scores == [0.8, 0.2]
    unpaired, _ = load_examples(write_image_data(tmp_path, "unpaired", 4), "unpaired")
    paired = pair_unpaired(unpaired, seed=0)
    assert len(paired) == 4
    # Each positive meets a negative of its own caption: the pairing never crosses prompts.
    for ex in paired:
        assert "bright" in ex.samples[0].value and "dark" in ex.samples[1].value
        assert ex.samples[0].value.split("-")[1] == ex.samples[1].value.split("-")[1]
    controls, _ = load_examples(write_image_data(tmp_path, "condition-pairs", 2), "condition-pairs")
    assert [ref.value for ref in controls[0].extras["controls"]] == ["a red circle", "a blue square"]


@pytest.mark.parametrize("row, message", [
    ({"caption": "x", "jpg_0": "missing.png", "jpg_1": "b.png", "label_0": 1}, "rows.jsonl:2: field 'jpg_0': image file"),
    ({"caption": "x", "jpg_0": "b.png", "jpg_1": "b.png", "label_0": 2}, "rows.jsonl:2: field 'label_0': must be 1"),
    ({"caption": 3, "jpg_0": "b.png", "jpg_1": "b.png", "label_0": 1}, "rows.jsonl:2: field 'caption': must be text"),
    ({"caption": "x", "jpg_1": "b.png", "label_0": 1}, "rows.jsonl:2: missing field 'jpg_0'"),
])
def test_bad_rows_are_named_by_file_line_and_field(tmp_path, row, message):
    write_png(tmp_path / "b.png", 0.5)
    good = {"caption": "x", "jpg_0": "b.png", "jpg_1": "b.png", "label_0": 1}
    (tmp_path / "rows.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_examples(tmp_path / "rows.jsonl", "image-pairs")
    examples, report = load_examples(tmp_path / "rows.jsonl", "image-pairs", on_bad_row="skip")
    assert len(examples) == 1 and sum(report.skipped.values()) == 1


def test_a_corrupt_image_is_named_when_it_is_read(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    write_png(tmp_path / "b.png", 0.5)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"caption": "x", "jpg_0": "broken.png", "jpg_1": "b.png",
                                                     "label_0": 1}) + "\n")
    examples, _ = load_examples(tmp_path / "rows.jsonl", "image-pairs")
    with pytest.raises(DataError, match=r"rows.jsonl:1: field 'jpg_0': cannot use it"):
        examples[0].samples[0].load((3, 16, 16))


def test_datasets_image_columns_and_image_folders(tmp_path):
    import datasets

    write_png(tmp_path / "a.png", 0.9)
    write_png(tmp_path / "b.png", 0.1)
    table = datasets.Dataset.from_dict({"caption": ["x"], "jpg_0": [str(tmp_path / "a.png")],
                                        "jpg_1": [str(tmp_path / "b.png")], "label_0": [1]})
    table = table.cast_column("jpg_0", datasets.Image()).cast_column("jpg_1", datasets.Image())
    table.save_to_disk(str(tmp_path / "ds"))
    examples, _ = load_examples(str(tmp_path / "ds"), "image-pairs")
    assert examples[0].origin == "ds row 1"  # rows are 1-based in every format
    assert examples[0].samples[0].load((1, 8, 8)).mean() > examples[0].samples[1].load((1, 8, 8)).mean()
    # An image folder with a JSONL index elsewhere: image_root says where relative paths point.
    index = tmp_path / "index" / "rows.jsonl"
    index.parent.mkdir()
    index.write_text(json.dumps({"caption": "x", "image": "a.png", "label": 1}) + "\n")
    with pytest.raises(DataError, match="does not exist"):
        load_examples(index, "unpaired")
    examples, _ = load_examples(index, "unpaired", image_root=str(tmp_path))
    assert examples[0].extras["label"] is True


def test_prompts_from_a_text_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\na dog\n")
    examples, _ = load_examples(tmp_path / "prompts.txt", "prompts")
    assert [ex.condition for ex in examples] == ["a cat", "a dog"]


def test_toy_and_brightness_rewards():
    from preftune.diffusion.toys import get_task, mode_centres

    task = get_task("gmm")
    reward = build_reward("toy", task)
    x = torch.stack([mode_centres()[0], mode_centres()[4]])
    assert reward(x, None).tolist() == pytest.approx([0.0, -16.0], abs=1e-5)
    assert task.target(x, None).tolist() == [True, False]
    images = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -0.5)])
    assert build_reward("brightness")(images, None).tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="toy model"):
        build_reward("toy", None)


def test_clip_reward_from_a_local_directory(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    from preftune.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.model_max_length = 16
    config = CLIPConfig(text_config=CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                                   eos_token_id=tokenizer.eos_token_id).to_dict(),
                        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=16, patch_size=8).to_dict(),
                        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                                 crop_size={"height": 16, "width": 16}),
                              tokenizer=tokenizer)
    processor.save_pretrained(tmp_path / "clip")
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    clip = build_reward({"type": "clip", "path": str(tmp_path / "clip")})
    scores = clip(images, ["a cat", "a dog", "a cat"])
    assert scores.shape == (3,) and scores.abs().max() <= 1.0 + 1e-5
    assert clip(images[:1], ["a cat"]).item() == pytest.approx(scores[0].item(), abs=1e-5)
    pick = build_reward({"type": "pickscore", "path": str(tmp_path / "clip")})
    scale = CLIPModel.from_pretrained(tmp_path / "clip").logit_scale.exp().item()
    assert pick(images, ["a cat", "a dog", "a cat"]).tolist() == pytest.approx((scale * scores).tolist(), rel=1e-4)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_reward({"type": "clip", "path": str(tmp_path / "nowhere")})


def test_recipes_accept_every_image_row_kind_and_name_the_valid_ones():
    from preftune.config_values import ConfigError
    from preftune.diffusion.config import DATA_KINDS, load_diffusion_config
    from preftune.diffusion.data import KINDS

    assert DATA_KINDS == KINDS
    recipe = Path(__file__).resolve().parents[1] / "configs" / "diffusion" / "rankdpo.yaml"
    for kind in KINDS:
        assert load_diffusion_config(recipe, [f"--data.kind={kind}"]).data.kind == kind
    with pytest.raises(ConfigError, match="data.kind must be auto, image-pairs, .*got 'pairwise'"):
        load_diffusion_config(recipe, ["--data.kind=pairwise"])
