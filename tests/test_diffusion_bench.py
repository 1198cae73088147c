"""benchmarks/diffusion.py --smoke: the whole protocol (pilots, beta choice, every cell, verdicts, table) in miniature."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from diffusion_helpers import QUICK_TOYS, quick_toy

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("diffusion_bench", REPO / "benchmarks" / "diffusion.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_catalogue_row_has_a_bench_row_with_a_judge():
    bench = load_bench()
    assert [row.catalogue for row in bench.ROWS] == ["d3po", "diffusion-dro", "smpo-diffusion", "rankdpo", "dso-dro",
                                                      "ddo", "awm", "dense-dpo", "cpo-condition"]
    names = {cell.name for row in bench.ROWS for cell in row.cells}
    for row in bench.ROWS:
        for clause in row.judge.split(" and "):
            left, _, right = bench._split(clause)
            for term in (left, right):
                name = term.rsplit(" ", 1)[0]
                assert name == "reference" or name in names, f"{row.catalogue}: judge names unknown cell {name!r}"


def test_verdict_needs_every_seed():
    bench = load_bench()
    row = bench.Row("x", "claim", [bench.Cell("a", "diffusion_dpo")], "a reward > reference reward")
    result = lambda seed, before, after: {"cell": "a", "seed": seed, "initial": {"eval/reward": before},
                                           "final": {"eval/reward": after}}
    assert bench.verdict(row, [result(0, 0.0, 1.0), result(1, 0.0, 2.0)])[0]
    held, why = bench.verdict(row, [result(0, 0.0, 1.0), result(1, 0.0, -2.0)])
    assert not held and "1/2 seeds" in why


@pytest.mark.slow
def test_smoke_bench_runs_every_cell_and_writes_the_table(tmp_path):
    bench = load_bench()
    toys = tmp_path / "toys"
    for name in QUICK_TOYS:
        if name != "digits":
            quick_toy(toys, name)
    assert bench.main(["--smoke", "--jobs", "1", "--toys", str(toys), "--out", str(tmp_path / "out"),
                       "--runs", str(tmp_path / "runs")]) == 0
    text = (tmp_path / "out" / "diffusion_smoke.md").read_text()
    report = json.loads((tmp_path / "out" / "diffusion_smoke.json").read_text())
    cells = {cell.name for row in bench.ROWS for cell in row.cells}
    assert {r["cell"] for r in report["results"]} == cells
    assert set(report["betas"]) == set(bench.PILOTS)
    for row in bench.ROWS:
        assert f"### {row.catalogue}" in text
    assert text.count("Reproduced") + text.count("Not reproduced") == len(bench.ROWS)
    assert "load average" in text and "flags" in text
