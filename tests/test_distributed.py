"""Several processes (docs/scaling.md): the shipped accelerate configs, the launcher check, batch
statistics over processes, and FSDP against one process, resumed exactly. The multi-process runs
use 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preftune.train.distributed import process_count_message, requested_processes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# -- the shipped accelerate configs -------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"),
                                        ("deepspeed_zero3", "DEEPSPEED")])
def test_each_accelerate_config_is_one_accelerate_reads(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.name == kind and config.mixed_precision == "bf16"
    if kind == "FSDP":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True  # FSDP2, full shard
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert {"fsdp_state_dict_type", "fsdp_activation_checkpointing"} <= set(fsdp)
        assert fsdp["fsdp_cpu_ram_efficient_loading"] is False  # the reference needs weights on every process
    if kind == "DEEPSPEED":
        stage = config.deepspeed_config["zero_stage"]
        assert stage == int(name[-1]) and config.deepspeed_config["zero3_init_flag"] is False
        assert stage == 2 or config.deepspeed_config["zero3_save_16bit_model"] is True


def test_every_config_is_named_in_the_scaling_doc():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    for path in CONFIGS.glob("*.yaml"):
        assert f"configs/accelerate/{path.name}" in doc, path.name


# -- a launcher that asked for more processes than the run has ---------------------------------------------

def test_the_processes_a_launcher_asked_for_are_read_from_its_environment():
    assert requested_processes({}) is None  # started by hand
    assert requested_processes({"WORLD_SIZE": "4"}) == 4  # torchrun, accelerate --multi_gpu
    # accelerate's one-process launcher sets MASTER_ADDR only when asked for several processes.
    launched = {"ACCELERATE_MIXED_PRECISION": "no"}
    assert requested_processes(launched, ["accelerate", "launch", "-m", "preftune"]) is None
    asked = {**launched, "MASTER_ADDR": "127.0.0.1"}
    assert requested_processes(asked, ["python", "accelerate", "launch", "--num_processes", "8", "-m", "x"]) == 8
    assert requested_processes(asked, ["accelerate", "launch", "--num_processes=3", "x.py"]) == 3
    assert requested_processes(asked, []) == 2  # the parent's command line is unreadable: "several"


def test_the_warning_names_the_fix_only_when_processes_are_missing():
    assert process_count_message(None, 1) is None and process_count_message(2, 2) is None
    message = process_count_message(2, 1)
    assert "asked for 2 processes but this run has 1" in message
    assert "--multi_gpu --num_processes 2" in message and "torchrun --nproc_per_node 2" in message


# -- batch statistics over processes ------------------------------------------------------------------------

@pytest.mark.slow
def test_batch_statistics_are_taken_over_every_process():
    """beta-DPO (with its filter), BCO, KTO, TPO and listwise ADPO on 2 processes, each holding half
    of every global batch, give each example the loss and metrics one process computes on the whole
    batch, and end with the same running state (tests/distributed_objectives.py)."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "distributed_objectives.py")], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [word for name in ("beta_dpo", "bco_pair", "kto", "tpo", "adpo_listwise",
                                                     "dpo + 0.3*bco_pair") for word in ("same:", *name.split())]


# -- FSDP and DeepSpeed: one process's run on two, and an exact resume ------------------------------------

def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """beta-DPO (running margin statistics, a filter drawn from the whole batch) on the tiny model:
    the recipe, and its run in one process with batch 8. The launch is the README's old line,
    `accelerate launch --num_processes 2` without --multi_gpu, which on a CPU machine starts one
    process; preftune must say that the launcher asked for two."""
    import random

    from preftune.tasks import get_task

    root = tmp_path_factory.mktemp("engines")
    task, rng = get_task("arithmetic"), random.Random(0)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": task.answer(p), "rejected": task.wrong_answer(p, rng)})
                            + "\n" for p in task.prompts("train", 48)))
    recipe = root / "recipe.yaml"
    recipe.write_text(f"model: {{name_or_path: 'builtin:tiny'}}\nloss: {{beta_dpo: {{beta: 0.5, filter_ratio: 0.5}}}}\n"
                      f"data: {{source: {data}, max_length: 32, max_prompt_length: 16}}\n"
                      "train: {steps: 4, batch_size: 8, lr: 1.0e-3, progress: false, checkpoint_every: 2, "
                      "keep_checkpoints: 2}\n")
    one = subprocess.run([*LAUNCH, "--num_processes", "2", "-m", "preftune", "train", "--config", str(recipe),
                          f"--output_dir={root}/one"], env=ENV, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    return recipe, root / "one", one.stderr


@pytest.mark.slow
def test_a_launcher_that_started_fewer_processes_than_asked_is_reported(one_process):
    assert "the launcher asked for 2 processes but this run has 1" in one_process[2]


@pytest.mark.slow
@pytest.mark.parametrize("engine, sharded", [("fsdp", "pytorch_model_fsdp_0"), ("deepspeed_zero2", "pytorch_model"),
                                             ("deepspeed_zero3", "pytorch_model")])
def test_an_engine_on_two_processes_matches_one_process_and_resumes_exactly(engine, sharded, one_process, tmp_path):
    """The engine's shipped config on 2 CPU processes with batch 4 each, against 1 process with batch 8:
    the same losses, kept sets, dynamic beta and weights. Resumed from its step-2 checkpoint (saved
    sharded by the engine), the run ends bit-identical to the uninterrupted one."""
    if engine.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (it builds from source: "
                                                "pip install --no-build-isolation deepspeed; docs/scaling.md)")
    recipe, single_dir, _ = one_process
    command = [*LAUNCH, "--config_file", str(CONFIGS / f"{engine}.yaml"), "--num_processes", "2",
               str(ROOT / "tests" / "engine_on_cpu.py"), "train", "--config", str(recipe), "--train.batch_size=4"]
    run = subprocess.run([*command, f"--output_dir={tmp_path}/run"], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "asked for" not in run.stderr
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 8
    assert summary["fast_paths"]["block_mask"], summary["fast_paths"]  # the engine's wrapper was seen through
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / sharded).is_dir()  # the engine's own format
    for a, b in zip(_metrics(single_dir), _metrics(tmp_path / "run"), strict=True):
        assert math.isclose(a["loss"], b["loss"], abs_tol=1e-5) and a["kept"] == b["kept"], (a, b)
        assert math.isclose(a["beta_batch"], b["beta_batch"], rel_tol=1e-5)
    single, parallel = _weights(single_dir), _weights(tmp_path / "run")
    assert max(float((single[k] - parallel[k]).abs().max()) for k in single) < 1e-4

    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "model")
    again = subprocess.run([*command, f"--output_dir={tmp_path}/resumed",
                            "--resume", str(tmp_path / "resumed" / "checkpoints" / "step-0000002")],
                           env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _weights(tmp_path / "resumed")
    assert all(resumed[k].equal(parallel[k]) for k in parallel)
    untimed = [[{k: v for k, v in m.items() if k != "tokens_per_s"} for m in _metrics(tmp_path / run)]
               for run in ("resumed", "run")]
    assert untimed[0] == untimed[1]
