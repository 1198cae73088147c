"""benchmarks/rl.py --smoke: every cell runs and the table states every claim with the command, the machine
and the load (the numbers of an untrained tiny model say nothing; the full table is benchmarks/results/rl.md)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("rl_benchmark", ROOT / "benchmarks" / "rl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_benchmark_writes_the_table(tmp_path):
    bench = load_benchmark()
    table = tmp_path / "rl.md"
    assert bench.main(["--smoke", "--jobs", "0", "--out", str(tmp_path), "--table", str(table)]) == 0
    report = json.loads(table.with_suffix(".json").read_text())
    assert all(run["code"] == 0 and run["summary"] for run in report["runs"])
    assert {run["cell"] for run in report["runs"]} == {cell[0] for cell in bench.CELLS}
    text = table.read_text()
    for needle in ("Command: `python benchmarks/rl.py --smoke", "CPU flags", "load average", "pdppo: PDPPO's expected",
                   "rto: greedy accuracy", "oreo: value-guided", "mcts_dpo: greedy", "dapo_step: greedy",
                   "mo_grpo (safety): gold helpful is higher when its weight is .5 than .2"):
        assert needle in text, needle
    assert all(r["verdict"] in ("holds", "does not hold") for r in report["claims"])


def test_verdict_needs_the_mean_and_a_majority_of_seeds():
    bench = load_benchmark()
    assert bench.verdict([0.1, 0.2, -0.05]) == "holds"
    assert bench.verdict([0.5, -0.1, -0.1]) == "does not hold"  # mean up, majority down
    assert bench.verdict([0.0, 0.0, 0.0]) == "does not hold"
    assert bench.stats([1.0, 2.0, 3.0]) == "2.000 ± 1.000"


def test_a_run_finished_by_an_interrupted_invocation_is_kept(tmp_path):
    bench = load_benchmark()
    run_dir = tmp_path / "runs" / "pdppo-seed1"
    run_dir.mkdir(parents=True)
    summary = {"kind": "lot-sizing", "final": {"eval/expected_return": -7.5, "eval/greedy_return": -7.2},
               "wall_seconds": 12.5}
    (run_dir / "rl_summary.json").write_text(json.dumps(summary))
    (run_dir / "cpu_seconds.json").write_text(json.dumps({"cpu_seconds": 9.0}))
    cell = next(c for c in bench.CELLS if c[0] == "pdppo")
    result = bench.run_cell(cell, 1, {}, tmp_path, smoke=False, jobs=2)  # would start a process if it ran
    assert result == {"cell": "pdppo", "seed": 1, "code": 0, "seconds": 12.5, "cpu_seconds": 9.0, "summary": summary,
                      "reused": True}


def test_collect_makes_the_table_of_the_finished_runs_and_lists_the_rest_as_not_run(tmp_path):
    bench = load_benchmark()
    for name, value in (("pdppo", -7.2), ("ppo--lot-sizing", -7.4)):
        run_dir = tmp_path / "runs" / f"{name}-seed0"
        run_dir.mkdir(parents=True)
        final = {"eval/expected_return": value, "eval/greedy_return": value, "eval/optimum": -7.1}
        (run_dir / "rl_summary.json").write_text(json.dumps({"kind": "lot-sizing", "final": final, "wall_seconds": 3.0}))
        (run_dir / "cpu_seconds.json").write_text(json.dumps({"cpu_seconds": 2.0}))
    table = tmp_path / "rl.md"
    assert bench.main(["--collect", "--seeds", "0", "--out", str(tmp_path), "--table", str(table)]) == 1  # runs missing
    text = table.read_text()
    assert "| pdppo: PDPPO's expected return > PPO's (exact, by DP); DP optimum -7.100 | -7.200 | -7.400 | holds |" in text
    assert "| rto | 0 | not run |" in text and "2 runs were finished by an earlier invocation" in text
    assert not (tmp_path / "runs" / "rto-seed0").exists()  # nothing ran
