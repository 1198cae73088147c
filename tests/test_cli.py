"""The command line: every command has honest --help, errors are one clear line, real recipes run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from preftune.cli import main

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-part1.jsonl.gz"


@pytest.mark.parametrize("command, expected", [
    ("train", ["--config", "--resume", "train.lr", "loss"]),
    ("sft", ["--config", "--resume"]),
    ("eval", ["--model", "--baseline", "--reference", "--task"]),
    ("generate", ["--model", "--prompt", "--temperature"]),
    ("methods", ["--json"]),
    ("verify", ["METHOD", "--json"]),
    ("quickstart", ["--config", "--preference.loss=simpo"]),
])
def test_every_command_has_help(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for fragment in expected:
        assert fragment in text, (command, fragment)


def test_python_dash_m_and_the_console_script_agree():
    out = subprocess.run([sys.executable, "-m", "preftune", "--version"], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    from preftune import __version__

    assert out.returncode == 0 and out.stdout.strip() == __version__


def test_methods_json_lists_every_registered_method_with_its_facts(capsys):
    from preftune.methods import all_methods

    assert main(["methods", "--json"]) == 0
    listed = [m for m in json.loads(capsys.readouterr().out) if m["kind"] == "method"]  # tools: test_analysis_tools.py
    assert [m["name"] for m in listed] == [s.name for s in all_methods()]
    for entry in listed:
        assert {"name", "seed", "family", "needs_reference", "status", "taxonomy", "hyperparameters"} <= entry.keys()
        assert set(entry["taxonomy"]) == {"data_strategy", "learning_framework", "constraint_mechanism",
                                          "model_property"}
    dpo = next(m for m in listed if m["name"] == "dpo")
    assert dpo["seed"] is None and dpo["needs_reference"] is True and dpo["hyperparameters"] == {"beta": 0.1}


def test_methods_table_shows_seed_and_status(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    simpo = next(line for line in lines if line.startswith("simpo "))
    assert "simpo" in simpo.split()[1] and "stable" in simpo
    from preftune.methods import all_methods

    for spec in all_methods():  # every name, however long, stands apart from its seed column
        row = next(line for line in lines if line.startswith(spec.name + " "))
        assert row.split()[:2] == [spec.name, spec.seed or "-"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--train.lrr=1"], "unknown key 'train.lrr'"),
    (["train", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["train", "--loss=nosuchloss", "--data.source=x.jsonl"], "unknown method 'nosuchloss'"),
    (["train", "--data.source=missing.jsonl"], "missing.jsonl: no such file or directory"),
    (["train", "stray"], "unrecognised arguments: stray"),
    (["sft", "--loss=dpo"], "`preftune sft` trains the sft objective"),
])
def test_errors_are_one_clear_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if "stray" in argv else _no_exit() as _:
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_verify_command_passes_and_speaks_json(capsys):
    assert main(["verify", "dpo", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert json.dumps(results)  # strict JSON
    assert main(["verify", "no-such-method"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not HH.exists(), reason="../shared/data is not beside this checkout (as in test_data.py)")
def test_the_real_model_recipe_runs_on_a_local_model_and_the_hh_sample(tmp_path, capsys):
    """configs/hf/dpo_hh_rlhf.yaml, pointed at a model saved with save_pretrained and the shared HH-RLHF rows."""
    from preftune.models import save_tiny_model

    model = save_tiny_model(tmp_path / "local-model")
    argv = ["train", "--config", str(ROOT / "configs/hf/dpo_hh_rlhf.yaml"), f"--model.name_or_path={model}",
            "--model.dtype=float32", f"--data.source={HH}", "--data.limit=40", "--data.max_length=192",
            "--data.max_prompt_length=128", "--train.steps=2", "--train.batch_size=4", "--train.grad_accum=1",
            "--train.precision=fp32", "--train.checkpoint_every=0", "--train.progress=false",
            f"--output_dir={tmp_path}/{{name}}"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "dpo-hh-rlhf" / "train_summary.json").read_text())
    assert summary["data"]["load"]["kept"] == 40
    assert summary["data"]["truncation"]["prompts_truncated"] > 0  # real prompts are long; counted, not silent
    assert summary["reference"] == "model"


@pytest.mark.slow
def test_eval_and_generate_on_a_trained_model(tiny_sft_model, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", tiny_sft_model, "--baseline", tiny_sft_model, "--reference", tiny_sft_model,
                 "--prompts", "40", "--samples", "2", "--out", str(out), "--json"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["kl"] == 0.0 and 0 <= metrics["gold_reward"] <= 1 and metrics["samples"] == 80
    capsys.readouterr()
    assert main(["generate", "--model", tiny_sft_model, "--prompt", "12+30=", "--temperature", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("12+30=") and line[len("12+30="):].isdigit()
