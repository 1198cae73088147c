"""`preftune claims --smoke`: every row end to end at toy size. It asserts only that each row yields a
verdict with its statistics (the toy budgets say nothing about the methods)."""
from __future__ import annotations

import json

import pytest

from preftune.claims.catalogue import all_claims


@pytest.mark.slow
def test_smoke_run_gives_every_row_a_verdict_with_its_statistics(tmp_path, capsys):
    from preftune.cli import main

    docs = tmp_path / "claims.md"
    assert main(["claims", "--smoke", "--no-progress", "--docs", str(docs), f"--output_dir={tmp_path}/{{name}}"]) == 0
    report = json.loads((tmp_path / "claims-smoke" / "claims.json").read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert set(rows) == {claim.row for claim in all_claims()}
    for row in rows.values():
        assert row["verdict"] in ("reproduced", "not reproduced", "inconclusive"), row["row"]
        assert "error" not in row, (row["row"], row.get("error"))
        assert row["parts"], row["row"]
        for part in row["parts"]:
            if part["kind"] == "exact":
                assert part["judgement"] in ("holds", "fails"), (row["row"], part)
                continue
            interval = part["interval"]
            assert interval["n"] == 2 and interval["low"] <= interval["mean"] <= interval["high"], (row["row"], part)
            assert sorted(part["per_seed"]) == ["1", "2"], (row["row"], part)
    for arm, setting in report["chosen"].items():   # every arm searched (or borrowed) and chose a setting
        assert "lr" in setting, arm
    text = docs.read_text()
    assert "| row | family | verdict |" in text and report["preregistration_digest"] in text
    assert all((tmp_path / "claims-smoke" / "plots" / name).exists() for name in ("claims_effects.png",
                                                                                  "claims_verdicts.png"))
