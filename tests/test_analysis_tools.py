"""The analysis rows of the catalogue are tools, listed by `preftune methods` beside the methods."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from preftune.analysis_tools import all_tools
from preftune.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
# The shared catalogue sits beside the project checkout (or beside its worktrees' folder).
CATALOGUE = next((p for p in (ROOT.parent / "shared" / "methods" / "catalogue.tsv",
                              ROOT.parent.parent / "shared" / "methods" / "catalogue.tsv") if p.exists()),
                 ROOT.parent / "shared" / "methods" / "catalogue.tsv")
ANALYSIS_SEEDS = {"more-is-less", "dpo-survey", "insights-alignment", "egida-safety", "3d-properties",
                  "likelihood-overopt", "daa-overopt-scaling"}


def test_methods_json_lists_the_tools_after_the_methods(capsys):
    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    kinds = [entry["kind"] for entry in listed]
    assert kinds == sorted(kinds, key=lambda k: k != "method")  # methods first, then tools
    tools = [entry for entry in listed if entry["kind"] == "tool"]
    assert {t["seed"] for t in tools} == ANALYSIS_SEEDS
    for tool in tools:
        assert tool["family"] == "analysis" and tool["command"] and tool["status"] in ("stable", "experimental")
        assert "hyperparameters" not in tool  # a tool is not a loss


def test_tool_seeds_are_exactly_the_catalogues_analysis_rows():
    if not CATALOGUE.exists():
        pytest.skip(f"{CATALOGUE} is not part of this checkout")
    with CATALOGUE.open(newline="") as handle:
        analysis = {row["id"] for row in csv.DictReader(handle, delimiter="\t") if row["family"] == "analysis"}
    assert analysis == ANALYSIS_SEEDS


def test_every_tool_names_real_modules_and_a_real_command():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for tool in all_tools():
        assert all((ROOT / path).exists() for path in tool.implemented_by), tool.name
        named = {word for word in tool.command.replace(";", " ").split() if word in commands}
        assert named, f"{tool.name}: {tool.command!r} names no preftune command"


def test_every_tool_is_stable_by_tests_that_exist_and_check_known_values():
    import ast

    for tool in all_tools():
        assert tool.status == "stable" and tool.checks, tool.name
        for check in tool.checks:
            path, name = check.split("::")
            tree = ast.parse((ROOT / path).read_text())
            defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
            assert name in defined, f"{tool.name}: {check} does not exist"


def test_methods_table_lists_the_tools(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "analysis tool" in out and "separability-probe" in out and "more-is-less" in out


@pytest.mark.parametrize("command, expected", [
    ("probe", ["--model", "--data", "--layers", "--pooling", "--folds", "pair"]),
    ("sweep", ["--task", "--values", "--every", "alpha - beta log d"]),
    ("bench", ["--config", "--smoke", "--readme", "mean ± std", "--seeds"]),
    ("report", ["RUN_DIR", "--out", "HTML"]),
])
def test_measurement_commands_have_help(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in expected:
        assert fragment in text, (command, fragment)


def test_report_on_a_missing_directory_is_one_clear_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Traceback" not in err
