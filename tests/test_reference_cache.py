"""The reference log-prob cache: same losses as a live reference, reused by later runs, never stale."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from preftune.config import load_config
from preftune.data import Tokenization, collate, load_examples
from preftune.fastpath import batch_logps
from preftune.models import Reference, build_tiny_model, build_tiny_tokenizer, make_reference, save_tiny_model
from preftune.reference_cache import (ReferenceLogpsCache, cache_applies, cache_key, compute_reference_logps,
                                      concat, data_fingerprint, weights_fingerprint)
from preftune.train.runner import run_training

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1 + a % 3)}
        for a in range(12) for b in range(4)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def run(tmp_path: Path, name: str, *overrides: str, rows=ROWS) -> tuple[list[dict], dict]:
    cfg = load_config(None, [f"--output_dir={tmp_path}/{{name}}", f"--name={name}", "--data.max_length=24",
                             "--data.max_prompt_length=12", "--loss.dpo.beta=0.5", "--train.lr=3e-3",
                             "--train.batch_size=8", "--train.steps=3", "--data.eval_fraction=0.25",
                             "--train.progress=false", *overrides])
    run_dir = run_training(cfg, data_source=rows)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return metrics, json.loads((run_dir / "train_summary.json").read_text())


def test_a_cached_run_has_the_loss_trajectory_of_a_live_run_and_a_later_run_reuses_the_cache(tmp_path):
    live, live_summary = run(tmp_path, "live", "--speed.reference_cache=off")
    cached, cached_summary = run(tmp_path, "cached", "--speed.reference_cache=on")
    again, again_summary = run(tmp_path, "again")  # auto

    assert live_summary["reference_cache"] == {}
    # 3 steps x 8 of the 36 training examples, and all 12 held-out ones.
    assert cached_summary["reference_cache"]["computed"] == 24 + 12
    assert again_summary["reference_cache"] == {**cached_summary["reference_cache"], "reused": 36, "computed": 0}
    assert Path(cached_summary["reference_cache"]["path"]).exists()
    assert [m["step"] for m in cached] == [1, 2, 3, 3]
    for a, b, c in zip(live, cached, again):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "eval/loss"):
            if key in a:
                assert math.isclose(a[key], b[key], abs_tol=1e-5) and b[key] == c[key], (key, a, b, c)
    assert live[2]["loss"] != live[0]["loss"]  # the policy moved, so the reference really matters


def test_a_changed_model_data_or_precision_makes_another_key_and_a_fresh_pass(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer, seed=0)
    examples = Tokenization(tokenizer, 24, 12).many(load_examples(ROWS[:6])[0])
    key = cache_key(data_fingerprint(examples), weights_fingerprint(model), "fp32")
    assert key == cache_key(data_fingerprint(examples), weights_fingerprint(build_tiny_model(tokenizer, seed=0)), "fp32")

    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert cache_key(data_fingerprint(examples), weights_fingerprint(model), "fp32") != key
    changed = [*examples[:-1], type(examples[-1])(examples[-1].prompt_ids, [examples[-1].response_ids[0] + [5],
                                                                              examples[-1].response_ids[1]], "pairwise")]
    assert data_fingerprint(changed) != data_fingerprint(examples)
    assert cache_key(data_fingerprint(examples), weights_fingerprint(build_tiny_model(tokenizer)), "bf16") != key

    models = [save_tiny_model(tmp_path / f"tiny-{seed}", seed=seed) for seed in (0, 1)]
    _, first = run(tmp_path, "first", f"--model.name_or_path={models[0]}")
    _, other_data = run(tmp_path, "other-data", f"--model.name_or_path={models[0]}",
                        rows=[{**r, "chosen": r["chosen"] + "!"} for r in ROWS])
    _, other_model = run(tmp_path, "other-model", f"--model.name_or_path={models[1]}")
    paths = {first["reference_cache"]["path"], other_data["reference_cache"]["path"],
             other_model["reference_cache"]["path"]}
    assert len(paths) == 3
    assert other_data["reference_cache"]["reused"] == 0 and other_model["reference_cache"]["reused"] == 0


def test_lookup_gives_what_a_live_forward_gives_per_token_whatever_the_batch(tokenizer):
    model = build_tiny_model(tokenizer, seed=2)
    rows = ROWS[:10] + [{"prompt": "rank:", "responses": ["a", "bb", "c"], "scores": [1.0, 2.0, 0.0]}]
    pairs = Tokenization(tokenizer, 24, 12).many(load_examples(rows[:10])[0])
    lists = Tokenization(tokenizer, 24, 12).many(load_examples(rows[10:])[0])
    examples = pairs + lists

    def logps(m, batch, token_level):
        return batch_logps(m, batch, token_level)

    # Computed in two shares (as two processes would), batches of 3 sorted by length.
    shares = [compute_reference_logps(model, examples, ids, tokenizer.pad_token_id, 3, True, logps, "cpu")
              for ids in ([0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9])]
    table = concat(shares)
    assert len(table) == 11 and table.has_tokens

    chosen = [7, 1, 4, 9]
    batch = collate([examples[i] for i in chosen], tokenizer.pad_token_id, example_ids=chosen)
    with torch.no_grad():
        live = batch_logps(model, batch, token_level=True)
    cached = table.lookup(batch, token_level=True)
    torch.testing.assert_close(cached.sum, live.sum, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.tokens, live.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(cached.mask, live.mask) and torch.equal(cached.length, live.length)
    assert table.lookup(batch).tokens is None

    three = collate([examples[10]], tokenizer.pad_token_id, example_ids=[10])
    with torch.no_grad():
        torch.testing.assert_close(table.lookup(three, True).tokens, batch_logps(model, three, True).tokens,
                                   atol=1e-5, rtol=1e-5)
    longer = Tokenization(tokenizer, 24, 12).many(load_examples([ROWS[40]])[0])  # "10+0=": two-digit answers
    with pytest.raises(RuntimeError, match="other response lengths"):
        table.lookup(collate(longer, tokenizer.pad_token_id, example_ids=[7]))
    with pytest.raises(RuntimeError, match="other examples"):
        table.lookup(collate(longer, tokenizer.pad_token_id, example_ids=[10]))


def test_a_saved_table_loads_back_and_merges_without_duplicates(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer, seed=3)
    examples = Tokenization(tokenizer, 24, 12).many(load_examples(ROWS[:8])[0])

    def compute(ids):
        return compute_reference_logps(model, examples, ids, tokenizer.pad_token_id, 4, False,
                                       lambda m, b, t: batch_logps(m, b, t), "cpu")

    first = compute([0, 1, 2, 3, 4])
    first.save(tmp_path / "table.pt", {})
    loaded = ReferenceLogpsCache.load(tmp_path / "table.pt")
    assert torch.equal(loaded.sums, first.sums) and loaded.tokens is None
    merged = loaded.merged(compute([3, 4, 5, 6, 7]))
    assert sorted(merged.ids.tolist()) == list(range(8)) and len(merged.sums) == 16


def test_pointwise_data_keeps_a_live_reference_and_modes_are_checked():
    assert cache_applies("auto", True, "pairwise") and cache_applies(True, True, "listwise")
    assert not cache_applies("auto", False, "pairwise")  # no reference needed, nothing to cache
    assert not cache_applies("off", True, "pairwise") and not cache_applies(False, True, "pairwise")
    assert not cache_applies("auto", True, "pointwise")
    with pytest.raises(ValueError, match="pointwise"):
        cache_applies("on", True, "pointwise")
    with pytest.raises(ValueError, match="reference_cache must be one of"):
        cache_applies("sometimes", True, "pairwise")


def test_a_cached_reference_holds_no_model(tokenizer):
    policy = build_tiny_model(tokenizer)
    reference = make_reference("auto", policy, "builtin:tiny", "float32", needs_reference=True)
    assert reference.frozen is not None
    reference.use_cache(ReferenceLogpsCache.empty(False))
    assert reference.frozen is None and reference.kind == "model"
    with pytest.raises(RuntimeError, match="served from its cache"):
        with reference.model():
            pass
    assert isinstance(reference, Reference)


@pytest.mark.slow
def test_two_processes_fill_the_cache_together_and_match_a_live_single_process_run(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"loss: {{dpo: {{beta: 0.5}}}}\ndata: {{source: {data}, max_length: 24, max_prompt_length: 12}}\n"
                      "train: {steps: 3, batch_size: 8, lr: 3.0e-3, progress: false}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "preftune", "train", "--config", str(recipe),
                          f"--output_dir={tmp_path}/one", "--speed.reference_cache=off"],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "preftune",
                          "train", "--config", str(recipe), f"--output_dir={tmp_path}/two", "--train.batch_size=4",
                          "--speed.reference_cache=on"], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["reference_cache"]["computed"] == 24
    table = ReferenceLogpsCache.load(Path(summary["reference_cache"]["path"]))
    assert len(table) == 24 and len(set(table.ids.tolist())) == 24
    for a, b in zip(*[[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                      for d in ("one", "two")]):
        assert math.isclose(a["loss"], b["loss"], abs_tol=1e-5), (a, b)


@pytest.mark.slow
def test_a_pass_whose_process_dies_leaves_a_cache_the_next_run_completes(tmp_path, tokenizer):
    """Two processes fill the cache; process 1 is killed after 3 of its 6 batches (process 0 is then stopped
    by torchrun, wherever it was). The next run takes what both saved, computes only the rest, and
    ends with the values one process computes for all 48 examples."""
    script = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              str(ROOT / "tests" / "distributed_reference_cache.py"), str(tmp_path / "cache"), str(tmp_path / "out.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    died = subprocess.run([*script, "--die-after", "3"], env=env, capture_output=True, text=True)
    assert died.returncode != 0 and not (tmp_path / "out.json").exists()
    parts = list((tmp_path / "cache").glob("*.part-*.pt"))
    left = sum(len(ReferenceLogpsCache.load(part)) for part in parts)
    assert parts and 12 <= left < 48  # process 1's first 3 batches of 4, and whatever process 0 had done

    again = subprocess.run(script, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "out.json").read_text())
    assert (summary["reused"], summary["computed"]) == (left, 48 - left)
    assert not list((tmp_path / "cache").glob("*.part-*.pt"))  # merged into the cache file, then removed

    examples = Tokenization(tokenizer, 24, 12).many(load_examples(ROWS)[0])
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer, seed=0)
    whole = compute_reference_logps(model, examples, list(range(48)), tokenizer.pad_token_id, 4, False,
                                    lambda m, b, t: batch_logps(m, b, t), "cpu")
    got = dict(zip(summary["ids"], torch.tensor(summary["sums"]).view(-1, 2).tolist()))
    for i, values in zip(whole.ids.tolist(), whole.sums.view(-1, 2).tolist()):
        assert got[i] == pytest.approx(values, abs=1e-5), i
