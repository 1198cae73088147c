"""benchmarks/gpu.py (preftune against TRL on one GPU) and the CPU-precision choice of benchmarks/speed.py:
their pure parts, and the GPU benchmark end to end on tiny shapes on the CPU (it has not run on a GPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402
import speed  # noqa: E402


def test_speed_times_in_bf16_only_where_the_cpu_has_it_natively():
    info = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
    assert speed.cpu_flags(info) == ["avx2", "avx512f", "avx512_bf16"]
    assert speed.timing_precision(speed.cpu_flags(info)) == "bf16"
    assert speed.timing_precision(speed.cpu_flags("flags : fpu avx2\n")) == "fp32"  # emulated bf16: time in fp32
    assert speed.timing_precision(["amx_bf16"]) == "bf16" and speed.timing_precision(["avx2"], "bf16") == "bf16"


def test_pair_lengths_follow_the_mix():
    for pair_tokens in (2048, 8192):
        for ratio in gpu.MIXES.values():
            prompt, response = gpu.lengths(pair_tokens, ratio)
            assert prompt + 2 * response == pair_tokens and abs(prompt / response - ratio) < 0.02


def test_model_flops_count_the_matmuls_and_causal_attention_of_both_rows():
    shape = gpu.SHAPES[0]
    # 2 rows of s tokens: 8 N per token, plus 8 L d s^2 per row.
    assert gpu.model_flops_per_pair(shape, 1000, 3, 1) == 2 * (8 * 1000 * 4 + 8 * shape.layers * shape.hidden * 16)


def test_the_largest_batch_is_found_by_doubling_then_bisecting():
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= 13

    assert gpu.largest_batch(fits, 2, deadline=float("inf")) == (13, True)
    assert tried == [4, 8, 16, 12, 14, 13]
    assert gpu.largest_batch(lambda b: True, 3, deadline=float("inf"), limit=20) == (12, False)  # capped
    clock = iter([0.0, 1.0, 5.0])
    assert gpu.largest_batch(lambda b: True, 2, deadline=2.0, clock=lambda: next(clock)) == (8, False)  # out of time


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_tiny_shapes_on_the_cpu(tmp_path):
    """Every timing run, the report and (with TRL installed) the loss parity, on a tiny shape."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-smoke.json").read_text())
    libraries = {"preftune"} | ({"trl"} if results["versions"]["trl"] else set())
    rows = results["timing"]
    assert {row["library"] for row in rows} == libraries and not any(row["oom"] for row in rows)
    assert {(row["data"], row["pair_tokens"]) for row in rows} == {("prompt-heavy", 96), ("balanced", 96)}
    assert all(row["tokens_per_s"] > 0 and 0 < row["mfu"] and len(row["losses"]) == 3 for row in rows)
    table = (tmp_path / "gpu-smoke.md").read_text()
    assert "| tiny | 96 | prompt-heavy | preftune, cached reference | 2 |" in table
    if "trl" in libraries:  # fp32 on the CPU: the two implementations of DPO agree closely
        parity = results["parity"][0]
        assert parity["preftune"][0] != parity["preftune"][-1]  # the loss moved over the three steps
        assert parity["max_diff"] < 1e-4, parity
