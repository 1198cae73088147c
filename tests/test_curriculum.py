"""Curry-DPO curricula on a real tiny LM (train/curriculum.py; offline.md §4 Tests).

Ranked lists are built by hand from arithmetic prompts: the right sum and three wrong ones, rated
with the task's partial credit (1, 1/2, 1/6, 1/21) and listed out of order.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from preftune.config import load_config
from preftune.data.ranked import pairs_from_ranked_rows
from preftune.tasks import get_task
from preftune.train.runner import run_training

pytestmark = pytest.mark.slow
OFFSETS = (0, 1, 5, 20)  # right answer, then off by 1, 5, 20: partial credit 1, 1/2, 1/6, 1/21


def ranked_rows(n: int, k: int = 4) -> list[dict]:
    task, rng = get_task("arithmetic", partial_credit=True), random.Random(0)
    rows = []
    for prompt in task.prompts("train", n):
        responses = [str(int(task.answer(prompt)) + d) for d in OFFSETS[:k]]
        rng.shuffle(responses)
        rows.append({"prompt": prompt, "responses": responses, "scores": [task.score(prompt, r) for r in responses]})
    return rows


def config(tmp_path: Path, model: str, name: str, *overrides: str):
    return load_config(None, [f"--name={name}", f"--output_dir={tmp_path}/{{name}}", f"--model.name_or_path={model}",
                              "--data.max_length=32", "--data.max_prompt_length=16", "--train.lr=1e-3",
                              "--train.batch_size=8", "--train.progress=false", "--train.warmup_ratio=0",
                              *overrides])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.method("curry_dpo", "value")
def test_iterative_stages_start_at_policy_equal_reference_and_chain(tiny_sft_model, tmp_path):
    rows = ranked_rows(16)
    cfg = config(tmp_path, tiny_sft_model, "iterative", "--loss=curry_dpo", "--loss.curry_dpo.beta=0.5",
                 "--train.steps=3",
                 "--curriculum.pairs=chosen_fixed", "--curriculum.schedule=iterative")
    run_dir = run_training(cfg, data_source=rows)
    record = json.loads((run_dir / "curriculum.json").read_text())
    stage_dirs = [run_dir / "stages" / "stage-1", run_dir / "stages" / "stage-2", run_dir]
    assert [Path(s["run_dir"]) for s in record["stages"]] == stage_dirs
    assert [s["pairs"] for s in record["stages"]] == [16, 16, 16] and record["skipped_stages"] == []
    # Stage k starts from stage k-1's policy (stage 1: the SFT model) ...
    assert [s["initial_model"] for s in record["stages"]] == [tiny_sft_model] + [str(d / "model") for d in stage_dirs[:2]]
    for k, stage_dir in enumerate(stage_dirs):
        logged = metrics(stage_dir)
        # ... which is also its reference: every margin is 0 and the first loss is log 2, measured.
        assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), k
        assert logged[0]["margin"] == pytest.approx(0.0, abs=1e-6), k
        # Training moved the policy away from the reference within the stage, so the exact 0 at the
        # start of the next stage is the refreshed reference, not a policy that never moved.
        assert abs(logged[-1]["margin"]) > 1e-3 and logged[-1]["loss"] != logged[0]["loss"], k
    # Stage 1 holds every prompt's easiest pair (right answer vs the one off by 20), stage 3 the hardest (off by 1).
    task = get_task("arithmetic")
    for k, offset in ((1, 20), (2, 5), (3, 1)):
        pairs = read_jsonl(run_dir / "data" / f"stage-{k}.jsonl")
        assert [(p["chosen"], p["rejected"]) for p in pairs] == [
            (task.answer(r["prompt"]), str(int(task.answer(r["prompt"])) + offset)) for r in rows]


@pytest.mark.method("curry_dpo", "reduction")
def test_one_stage_with_one_pair_per_prompt_reproduces_plain_dpo_bit_for_bit(tiny_sft_model, tmp_path):
    rows = ranked_rows(24, k=2)  # one pair per prompt, so one stage
    curriculum = run_training(config(tmp_path, tiny_sft_model, "curriculum", "--loss=curry_dpo",
                                     "--loss.curry_dpo.beta=0.5", "--train.steps=3", "--curriculum.pairs=chosen_fixed"),
                              data_source=rows)
    plain = run_training(config(tmp_path, tiny_sft_model, "plain", "--loss.dpo.beta=0.5", "--train.steps=3"),
                  data_source=pairs_from_ranked_rows(rows))
    assert not (curriculum / "stages").exists()
    a, b = weights(curriculum), weights(plain)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in metrics(curriculum)] == [m["loss"] for m in metrics(plain)]
    initial = weights_of(tiny_sft_model)
    assert not all(torch.equal(a[k], initial[k]) for k in a)  # and the runs did train


def non_increasing(values: list[float], tolerance: float = 1e-4) -> bool:
    """Sorted largest first, up to float32 noise between a batched and a single forward pass."""
    return all(a >= b - tolerance for a, b in zip(values, values[1:]))


def weights_of(model_dir: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.mark.method("curry_dpo", "value")
def test_sorted_run_by_reference_margin_trains_easy_to_hard_without_shuffle(tiny_sft_model, tmp_path):
    from preftune.data.collate import collate
    from preftune.data.tokenize import TokenizedExample, encode_prompt
    from preftune.logps import sequence_logps
    from preftune.models import load_causal_lm, load_tokenizer

    rows = ranked_rows(8)
    run_dir = run_training(config(tmp_path, tiny_sft_model, "sorted", "--loss=curry_dpo", "--loss.curry_dpo.beta=0.5",
                                  "--train.steps=3",
                           "--curriculum.pairs=chosen_fixed", "--curriculum.schedule=sorted",
                           "--curriculum.order=ref_implicit_margin"), data_source=rows)
    assert load_config(run_dir / "config.yaml").train.shuffle is False
    order = read_jsonl(run_dir / "data" / "stage-1.jsonl")
    assert len(order) == 24 and json.loads((run_dir / "curriculum.json").read_text())["stages"][0]["pairs"] == 24
    # The reference's own margins, computed here: log pi_ref(chosen) - log pi_ref(rejected).
    tokenizer, model = load_tokenizer(tiny_sft_model), load_causal_lm(tiny_sft_model).eval()

    def margin(pair):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for t in (pair["chosen"], pair["rejected"])]
        batch = collate([TokenizedExample(encode_prompt(tokenizer, pair["prompt"]), ids, "pairwise")],
                        tokenizer.pad_token_id)
        with torch.no_grad():
            sums = sequence_logps(model, batch).sum[0]
        return float(sums[0] - sums[1])

    margins = [margin(p) for p in order]
    # Stage-major: the 8 first pairs are each prompt's easiest by reference margin, then the second, then the third.
    stages = [order[0:8], order[8:16], order[16:24]]
    for k, stage in enumerate(stages):
        assert sorted(p["prompt"] for p in stage) == sorted(r["prompt"] for r in rows), k
        assert non_increasing(margins[8 * k:8 * k + 8]), k  # inside a stage: easier (larger margin) first
    for prompt in {r["prompt"] for r in rows}:
        assert non_increasing([margin(p) for s in stages for p in s if p["prompt"] == prompt]), prompt
    assert metrics(run_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_curriculum_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="curriculum.pairs"):
        run_training(config(tmp_path, "builtin:tiny", "bad", "--curriculum.pairs=best_worst"), data_source=ranked_rows(4))
    with pytest.raises(ValueError, match="curriculum.schedule"):
        run_training(config(tmp_path, "builtin:tiny", "bad", "--curriculum.pairs=all_pairs", "--curriculum.schedule=cyclic"),
              data_source=ranked_rows(4))
