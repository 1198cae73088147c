"""`preftune bench` on the smoke configuration: the table's rows and columns, mean ± std over three
seeds recomputed from the cells, shared SFT models and pairs, resuming; and `preftune sweep` on
the same shared assets."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from preftune.bench import bench_entries, load_bench_config, run_bench
from preftune.config import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "methods"

ROOT = Path(__file__).resolve().parents[1]
AXES = ["data strategy", "learning framework", "constraint mechanism", "model property"]


def _table(markdown: str, title: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = lines.index(title) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [r for r in rows if not set("".join(r)) <= {"-"}]


@pytest.mark.slow
def test_smoke_table_has_every_method_task_and_start_with_taxonomy_columns(smoke_bench):
    cfg, report = smoke_bench
    markdown = (cfg.run_dir / "results.md").read_text()
    assert markdown.startswith("Command: `preftune bench --smoke`")
    for start, title in (("sft", "### Gold reward, preference training after SFT"),
                         ("base", "### Gold reward, preference training from the base model (no SFT stage)")):
        header, *rows = _table(markdown, title)
        assert header == ["method", *AXES, "arithmetic"]
        assert [r[0] for r in rows] == [f"({start} model)", "dpo", "simpo"]
        assert all("±" in r[-1] for r in rows), rows
        simpo = rows[-1]
        assert "reference-free" in simpo[3] and "pairwise" in simpo[1]
    header, *_ = _table(markdown, "#### arithmetic")
    assert header[:7] == ["method", "start", "gold reward", "win-rate vs SFT", "KL", "length", "train s"]
    assert all(c["status"] == "ok" for c in report["cells"]), [c.get("error") for c in report["cells"]]
    assert len(report["cells"]) == 2 * 2 * 3


@pytest.mark.slow
def test_every_number_is_mean_and_std_over_three_seeds_of_the_cells(smoke_bench):
    cfg, report = smoke_bench
    markdown = (cfg.run_dir / "results.md").read_text()
    for start, title in (("sft", "### Gold reward, preference training after SFT"),
                         ("base", "### Gold reward, preference training from the base model (no SFT stage)")):
        shown = {r[0]: r[-1] for r in _table(markdown, title)}
        for method in ("dpo", "simpo"):
            cells = [json.loads((cfg.run_dir / "cells" / "arithmetic" / start / method / f"seed{s}.json").read_text())
                     for s in (0, 1, 2)]
            values = [c["metrics"]["gold_reward"] for c in cells]
            row = next(r for r in report["rows"] if (r["start"], r["method"]) == (start, method))
            stat = row["metrics"]["gold_reward"]
            assert stat["n"] == 3 and stat["mean"] == pytest.approx(statistics.fmean(values))
            assert stat["std"] == pytest.approx(statistics.stdev(values))
            assert shown[method] == f"{stat['mean']:.3f} ± {stat['std']:.3f}"
            for key in ("win_rate", "kl", "length"):
                assert row["metrics"][key]["n"] == 3
            assert row["train_seconds"]["n"] == 3 and row["train_seconds"]["mean"] > 0
    results = json.loads((cfg.run_dir / "results.json").read_text())
    assert results["command"] == "preftune bench --smoke" and results["seeds"] == [0, 1, 2]
    assert all(Path(p).stat().st_size > 1000 for p in results["plots"])


@pytest.mark.slow
def test_sft_models_and_pairs_are_made_once_per_seed_and_shared(smoke_bench):
    cfg, report = smoke_bench
    made = [json.loads(p.read_text()) for p in (cfg.run_dir / "assets" / "sft").glob("*/sft.json")]
    assert sorted((m["task"], m["seed"]) for m in made) == [("arithmetic", 0), ("arithmetic", 1), ("arithmetic", 2)]
    assert len(list((cfg.run_dir / "assets" / "samples").glob("*.json"))) == 3
    for seed in (0, 1, 2):
        stats = [c["data"] for c in report["cells"] if c["seed"] == seed]
        assert len({s["rows"] for s in stats}) == 1  # every method and both starts: the same pairs
    # The SFT model improves on the base model, and its win-rate against itself is about even.
    rows = {(r["start"], r["method"]): r["metrics"] for r in report["rows"]}
    assert rows[("sft", "(sft model)")]["gold_reward"]["mean"] > rows[("base", "(base model)")]["gold_reward"]["mean"]
    assert rows[("sft", "(sft model)")]["win_rate"]["mean"] == pytest.approx(0.5, abs=0.1)


@pytest.mark.slow
def test_a_second_run_resumes_without_retraining(smoke_bench):
    cfg, report = smoke_bench
    cells = sorted((cfg.run_dir / "cells").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in cells]
    again = run_bench(cfg, "preftune bench --smoke", progress=False, log=lambda *a: None)
    assert [p.stat().st_mtime_ns for p in cells] == stamps
    assert again["rows"] == report["rows"]


def test_tasks_with_the_same_demonstrations_share_the_sft_model_and_samples():
    from preftune.bench import sft_key

    cfg = load_bench_config(ROOT / "configs" / "bench" / "full.yaml")
    assert sft_key(cfg, "arithmetic", 0) == sft_key(cfg, "noisy-labels", 0) == sft_key(cfg, "mixed-margins", 0)
    assert len({sft_key(cfg, task, 0) for task in cfg.tasks}) == len(cfg.tasks) - 2
    assert sft_key(cfg, "arithmetic", 0) != sft_key(cfg, "arithmetic", 1)


def test_the_base_model_is_pretrained_on_every_distinct_demonstration_set_and_sft_starts_from_it():
    from preftune.bench import base_model_dir, initial_model_dir, pretrain_rows, sft_key
    from preftune.tasks import get_task

    cfg = load_bench_config(ROOT / "configs" / "bench" / "full.yaml", ["--pretrain.demonstrations_per_task=50"])
    rows = pretrain_rows(cfg, 0)
    # arithmetic, noisy-labels and mixed-margins have one demonstration set: five sets of 50 rows
    assert len(rows) == 5 * 50
    for task in ("arithmetic", "length-bias", "two-objective", "multistep", "safety"):
        demos = get_task(task, **cfg.task_settings(task).options).demonstrations(50, cfg.pretrain.noise, 0)
        assert all(d in rows for d in demos), task
    assert rows != pretrain_rows(cfg, 1)
    assert base_model_dir(cfg, 0) != base_model_dir(cfg, 1) != initial_model_dir(cfg, 1)
    # SFT starts from the base model: another pretraining budget is another SFT model
    longer = load_bench_config(ROOT / "configs" / "bench" / "full.yaml",
                               ["--pretrain.demonstrations_per_task=50", "--pretrain.steps=301"])
    assert sft_key(cfg, "arithmetic", 0) != sft_key(longer, "arithmetic", 0)
    untrained = load_bench_config(ROOT / "configs" / "bench" / "full.yaml", ["--pretrain.steps=0"])
    assert base_model_dir(untrained, 2) == initial_model_dir(untrained, 2)


@pytest.mark.slow
def test_the_smoke_benchs_base_model_is_pretrained_and_is_what_sft_and_base_cells_start_from(smoke_bench):
    import torch

    from preftune.bench import base_model_dir, initial_model_dir
    from preftune.models import load_causal_lm

    cfg, report = smoke_bench
    for seed in cfg.seeds:
        base = base_model_dir(cfg, seed)
        record = json.loads(base.with_name("model.json").read_text())
        assert record["pretrain_steps"] == cfg.pretrain.steps and record["model"] == str(base)
        trained, initial = load_causal_lm(str(base)), load_causal_lm(str(initial_model_dir(cfg, seed)))
        moved = [not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters())]
        assert all(moved)
        assets = json.loads((cfg.run_dir / "assets" / "arithmetic" / f"seed{seed}" / "assets.json").read_text())
        assert assets["base_model"] == str(base)
        sft = json.loads(Path(assets["sft_model"]).parent.parent.joinpath("sft.json").read_text())
        assert sft["base_model"] == str(base)
        import yaml

        cell = yaml.safe_load((cfg.run_dir / "runs" / "arithmetic" / "base" / f"seed{seed}" / "dpo" /
                               "config.yaml").read_text())
        assert cell["model"]["name_or_path"] == str(base)
    markdown = (cfg.run_dir / "results.md").read_text()
    assert f"for {cfg.pretrain.steps} steps of {cfg.pretrain.batch_size}" in markdown


def test_entries_cover_recipes_and_registered_offline_methods():
    cfg = load_bench_config(ROOT / "configs" / "bench" / "full.yaml", [f"--recipes={ROOT / 'configs' / 'methods'}"])
    entries = {e.name: e for e in bench_entries(cfg)}
    from preftune.methods import all_methods

    offline = {s.name for s in all_methods() if s.family.startswith("offline")}
    assert offline <= set(entries) and "sft" not in entries
    assert entries["dpo"].loss is None and entries["dpo"].recipe.endswith("dpo.yaml")
    recipe_less = [e for e in entries.values() if e.loss is not None]
    assert all(e.recipe.endswith("dpo.yaml") and e.loss == e.name for e in recipe_less)


def test_bench_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_bench_config(None, ["--tasks={nope: {}}"])
    with pytest.raises(ConfigError, match="starts"):
        load_bench_config(None, ["--starts=[rl]"])
    with pytest.raises(ConfigError, match="no recipe or offline method 'nosuch'"):
        bench_entries(load_bench_config(None, ["--methods=[nosuch]", f"--recipes={ROOT / 'configs' / 'methods'}"]))
    with pytest.raises(ConfigError, match="unknown key 'tasks.arithmetic.steps'"):
        load_bench_config(None, ["--tasks={arithmetic: {steps: 3}}"])


@pytest.mark.slow
def test_sweep_on_the_benchs_shared_assets_fits_and_plots(smoke_bench):
    from preftune.bench.sweep import run_sweep
    from preftune.eval.sweep import format_sweep

    cfg, _ = smoke_bench
    cfg.preference.lr = 3e-3  # a few steps must move the policy measurably
    cfg.preference.batch_size = 4  # the smoke SFT model's few pairs, less the held-out tenth
    report = run_sweep(cfg, "arithmetic", values=(0.1, 1.0), seed=0, every=2, prompts=8, samples_per_prompt=2,
                       progress=False, log=lambda *a: None)
    assert [(p["value"], p["step"]) for p in report["points"]] == [(0.1, 0), (0.1, 2), (0.1, 4), (1.0, 0), (1.0, 2),
                                                                   (1.0, 4)]
    assert all(p["d"] == pytest.approx(max(p["kl"], 0) ** 0.5) for p in report["points"])
    assert report["points"][0]["gain"] == 0.0
    assert {"alpha", "beta", "d_star", "r_star", "rmse"} <= set(report["fit"])
    assert Path(report["plot"]).stat().st_size > 1000
    assert json.loads((cfg.run_dir / "sweep" / "sweep.json").read_text())["fit"] == report["fit"]
    assert "fit R(d) = d(alpha - beta log d)" in format_sweep(report)


def test_tgdpo_is_guided_by_the_dpo_run_of_its_own_cell_and_runs_after_it(tmp_path):
    from preftune.bench import cell_run_config, guidance_model, needs_dpo_guidance

    cfg = load_bench_config(None, [f"--output_dir={tmp_path}/{{name}}"])
    cell = {"task": "arithmetic", "start": "sft", "method": "tgdpo", "seed": 1,
            "recipe": str(RECIPES / "tgdpo.yaml"), "loss": None}
    assets = {"sft_model": "SFT", "base_model": "BASE"}
    assert needs_dpo_guidance(str(RECIPES / "tgdpo.yaml")) and not needs_dpo_guidance(str(RECIPES / "dpo.yaml"))
    assert not needs_dpo_guidance(str(RECIPES / "brain.yaml"))  # BRAIn's proposal is the sampling model
    # Without a dpo run the guidance falls back to the starting model (TGDPO then trains as DPO) ...
    assert guidance_model(cfg, cell, "SFT") == "SFT"
    assert cell_run_config(cfg, cell, assets).aux_models == {"guidance": "SFT"}
    # ... and with one, it is that run's model: same task, start and seed, never another cell's.
    dpo_model = cfg.run_dir / "runs" / "arithmetic" / "sft" / "seed1" / "dpo" / "model"
    dpo_model.mkdir(parents=True)
    (dpo_model / "config.json").write_text("{}")
    assert cell_run_config(cfg, cell, assets).aux_models == {"guidance": str(dpo_model)}
    assert guidance_model(cfg, {**cell, "seed": 0}, "SFT") == "SFT"
    assert guidance_model(cfg, {**cell, "start": "base"}, "BASE") == "BASE"


def test_brains_proposal_is_the_model_that_sampled_the_responses(tmp_path):
    from preftune.bench import cell_run_config

    cfg = load_bench_config(None, [f"--output_dir={tmp_path}/{{name}}"])
    assets = {"sft_model": "SFT", "base_model": "BASE"}
    for start in ("sft", "base"):  # both starts train on the SFT model's samples
        cell = {"task": "arithmetic", "start": start, "method": "brain", "seed": 0,
                "recipe": str(RECIPES / "brain.yaml"), "loss": None}
        assert cell_run_config(cfg, cell, assets).aux_models == {"proposal_logps": "SFT"}


def test_curricula_and_listwise_objectives_train_on_scored_lists():
    from preftune.bench import rows_pairing
    from preftune.config import load_config

    assert rows_pairing(load_config(str(RECIPES / "curry_dpo.yaml"))) == "listwise"
    assert rows_pairing(load_config(str(RECIPES / "adpo_listwise.yaml"))) == "listwise"
    assert rows_pairing(load_config(str(RECIPES / "dpo.yaml"))) == load_config(str(RECIPES / "dpo.yaml")).data.task.pairing


def test_the_readme_section_replaces_only_itself(smoke_bench, tmp_path):
    from preftune.bench import write_readme

    cfg, report = smoke_bench
    path = tmp_path / "README.md"
    path.write_text("# Benchmarks\n\n## speed.py\n\nthe speed table\n")
    write_readme(report, path)
    first = path.read_text()
    assert first.startswith("# Benchmarks\n\n## speed.py\n\nthe speed table\n") and "preftune bench --smoke" in first
    path.write_text(first + "\n## after\n\nkept too\n")
    write_readme(report, path)  # a second write replaces the section, keeps what surrounds it
    second = path.read_text()
    assert second.count("<!-- bench-table:start -->") == 1 and second.endswith("## after\n\nkept too\n")
    assert "the speed table" in second


@pytest.mark.slow
def test_a_terminated_bench_stops_its_workers(tmp_path):
    """SIGTERM to the bench process (a scheduler's preemption) must not leave worker processes running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slow_job.py").write_text(
        "import os, time\n"
        "def job(cfg_dict, directory):\n"
        "    open(os.path.join(directory, str(os.getpid())), 'w').close()\n"
        "    time.sleep(120)\n")
    script = ("import sys; from slow_job import job\n"
              "from preftune.bench import BenchConfig, _run_jobs\n"
              "_run_jobs(BenchConfig(workers=2), job, [(sys.argv[1],)] * 4, 'jobs', False, str)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while len([p for p in tmp_path.iterdir() if p.name.isdigit()]) < 2 and time.time() < deadline:
        time.sleep(0.2)
    workers = [int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert len(workers) == 2, "the two workers did not start"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) != 0

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        status = open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}/stat") else "X"
        return status != "Z"  # a zombie has stopped; only its exit status is left

    deadline = time.time() + 15
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
