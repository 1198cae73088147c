"""The training loop: it learns, it resumes exactly, and it scales to several processes unchanged."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from preftune.config import load_config
from preftune.tasks import get_task
from preftune.train.checkpoint import list_checkpoints, resolve_resume
from preftune.train.runner import run_training

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """96 arithmetic pairs: the correct sum against a near miss."""
    task, rng = get_task("arithmetic"), random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": p, "chosen": task.answer(p), "rejected": task.wrong_answer(p, rng)}
            for p in task.prompts("train", 96)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, model: str, source, *overrides: str):
    return load_config(None, [f"--output_dir={tmp_path}/{{name}}", f"--model.name_or_path={model}",
                              f"--data.source={source}", "--data.max_length=32", "--data.max_prompt_length=16",
                              "--loss.dpo.beta=0.5", "--train.lr=1e-3", "--train.batch_size=8",
                              "--train.progress=false", *overrides])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_dpo_loss_falls_and_gold_accuracy_rises_on_the_tiny_task(tiny_sft_model, tmp_path):
    from preftune.eval.task_eval import evaluate_on_task
    from preftune.models import load_causal_lm, load_tokenizer

    # The quickstart's preference stage. Gold accuracy first dips (about -0.04 at step 75) and
    # then rises above the SFT model's (+0.07 by step 300 when this was written).
    cfg = config(tmp_path, tiny_sft_model, "task:arithmetic", "--name=dpo", "--train.steps=300",
                 "--train.batch_size=32", "--train.lr=1e-4", "--loss.dpo.beta=1.0", "--data.task.max_new_tokens=8")
    run_dir = run_training(cfg)
    losses = [m["loss"] for m in metrics(run_dir)]
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.05

    task, tokenizer = get_task("arithmetic"), load_tokenizer(tiny_sft_model)
    options = dict(samples_per_prompt=4, max_new_tokens=8, seed=7, progress=False)
    sft = load_causal_lm(tiny_sft_model)
    before = evaluate_on_task(sft, tokenizer, task, task.prompts("test"), **options)
    after = evaluate_on_task(load_causal_lm(str(run_dir / "model")), tokenizer, task, task.prompts("test"),
                             baseline=sft, **options)
    assert after["gold_reward"] > before["gold_reward"] + 0.03, (before, after)
    assert after["win_rate"] > 0.5


def test_stop_and_resume_gives_the_same_parameters_as_an_uninterrupted_run(tiny_sft_model, pairs_file, tmp_path):
    straight = run_training(config(tmp_path, tiny_sft_model, pairs_file, "--name=straight", "--train.steps=6"))

    def stop_at_step_three(step, _):
        if step == 3:
            raise KeyboardInterrupt

    cfg = config(tmp_path, tiny_sft_model, pairs_file, "--name=resumed", "--train.steps=6")
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, on_step_end=stop_at_step_three)
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["step-0000003"]
    assert not (cfg.run_dir / "model").exists()
    run_training(cfg, resume=True)

    assert max_difference(weights(straight), weights(cfg.run_dir)) == 0.0
    assert [m["step"] for m in metrics(cfg.run_dir)] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in metrics(cfg.run_dir)] == [m["loss"] for m in metrics(straight)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """The built-in tiny model as initialised, saved: enough for the tests of the loop's mechanics."""
    from preftune.models import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_a_signal_within_gradient_accumulation_then_resume_is_bit_identical(tiny_model, pairs_file, tmp_path,
                                                                           monkeypatch):
    """grad_accum 2, and Ctrl-C or SIGTERM in the middle of step 3's accumulation (after the forward of its
    first micro-batch, when accelerate's micro-batch counter stands at 5 of 6): the step in progress is finished
    and saved (a save there would hold the counter half-way through a cycle, so a resumed run would step after
    one micro-batch), and --resume gives the uninterrupted run's weights and losses bit for bit."""
    from preftune.train import loop

    handlers_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    args = ("--train.steps=5", "--train.batch_size=4", "--train.grad_accum=2")
    straight = run_training(config(tmp_path, tiny_model, pairs_file, "--name=straight", *args))
    forward = loop.compute_objective
    for signum in (signal.SIGINT, signal.SIGTERM):
        calls = []

        def signal_within_step_3(*arguments, **options):
            out = forward(*arguments, **options)
            calls.append(1)
            if len(calls) == 5:  # micro-batches 1-2 are step 1, 3-4 step 2, 5-6 step 3
                os.kill(os.getpid(), signum)
            return out

        monkeypatch.setattr(loop, "compute_objective", signal_within_step_3)
        cfg = config(tmp_path, tiny_model, pairs_file, f"--name=stopped-{signum}", *args)
        with pytest.raises(KeyboardInterrupt) as stopped:
            run_training(cfg)
        saved = [p.name for p in list_checkpoints(cfg.run_dir)]
        monkeypatch.undo()
        run_training(cfg, resume=True)
        assert max_difference(weights(straight), weights(cfg.run_dir)) == 0.0, signum
        assert [m["loss"] for m in metrics(cfg.run_dir)] == [m["loss"] for m in metrics(straight)]
        assert saved == ["step-0000003"] and stopped.value.exit_code == 128 + signum
    # the loop's handlers are gone again: the ones from before the runs are back (a shell's background
    # job starts with SIGINT ignored, so compare with what was there, not with Python's defaults)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers_before


def test_a_torn_metrics_line_does_not_block_resume_and_tensorboard_holds_each_step_once(tiny_model, pairs_file,
                                                                                        tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tmp_path, tiny_model, pairs_file, "--name=torn", "--train.steps=4", "--train.checkpoint_every=2")
    run_training(cfg)
    with (cfg.run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "loss": 0.69')  # killed while writing a line
    capsys.readouterr()
    run_training(cfg, resume=str(cfg.run_dir / "checkpoints" / "step-0000002"))  # steps 3 and 4 are logged again
    assert "dropped its torn last line" in capsys.readouterr().err
    assert [m["step"] for m in metrics(cfg.run_dir)] == [1, 2, 3, 4]
    events = EventAccumulator(str(cfg.run_dir / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3, 4]


def started(argv: list[str], run_dir: Path, steps: int, **options) -> subprocess.Popen:
    """A training command, returned once it has logged `steps` steps."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **options)
    log = run_dir / "metrics.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= steps):
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.2)
    return process


def long_recipe(tmp_path: Path, model: str, pairs: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name_or_path: {model}}}\nloss: {{dpo: {{beta: 0.5}}}}\n"
                      f"data: {{source: {pairs}, max_length: 32, max_prompt_length: 16}}\n"
                      "train: {steps: 100000, batch_size: 4, lr: 1.0e-3, progress: false}\n")
    return recipe


def assert_saved_at_the_last_logged_step(run_dir: Path, processes: int) -> None:
    [checkpoint] = list_checkpoints(run_dir)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["interrupted"] and state["step"] == metrics(run_dir)[-1]["step"] >= 2
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == \
        [f"random_states_{rank}.pkl" for rank in range(processes)]  # every process saved its state


@pytest.mark.slow
def test_sigterm_exits_143_after_saving_the_step_in_progress(tiny_model, pairs_file, tmp_path):
    run_dir = tmp_path / "run"
    process = started([sys.executable, "-m", "preftune", "train", "--config",
                       str(long_recipe(tmp_path, tiny_model, pairs_file)), f"--output_dir={run_dir}"], run_dir, 2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 143, output[-3000:]
    assert "SIGTERM: stopping after the step in progress" in output and "Traceback" not in output
    assert_saved_at_the_last_logged_step(run_dir, 1)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_sigterm_under_a_launcher_saves_on_every_process(launcher, tiny_model, pairs_file, tmp_path):
    """SIGTERM to the launcher and its two processes (as a scheduler's preemption sends it): both processes stop
    after the same step and save it together, none prints a traceback. `accelerate launch` then exits 143
    with no traceback; torchrun (torch's code, not ours) prints its own SignalException and exits 1."""
    run_dir = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"] if launcher == "torchrun" else \
        [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2"]
    process = started([*launch, "-m", "preftune", "train", "--config", str(long_recipe(tmp_path, tiny_model, pairs_file)),
                       f"--output_dir={run_dir}"], run_dir, 2, start_new_session=True)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=600)[0]
    assert_saved_at_the_last_logged_step(run_dir, 2)
    assert str(ROOT / "preftune") not in "".join(line for line in output.splitlines(True) if line.startswith("  File "))
    if launcher == "accelerate":
        assert process.returncode == 143 and "Traceback" not in output, output[-3000:]
    else:
        assert process.returncode == 1 and "SignalException" in output


def test_periodic_checkpoints_are_kept_and_resume_from_a_named_one(tiny_sft_model, pairs_file, tmp_path):
    cfg = config(tmp_path, tiny_sft_model, pairs_file, "--name=ckpt", "--train.steps=6",
                 "--train.checkpoint_every=2", "--train.keep_checkpoints=2")
    run_training(cfg)
    kept = list_checkpoints(cfg.run_dir)
    assert [p.name for p in kept] == ["step-0000004", "step-0000006"]
    (cfg.run_dir / "checkpoints" / "step-0000008.tmp").mkdir()  # a save that never completed
    assert resolve_resume(cfg.run_dir, True).name == "step-0000006"
    final = weights(cfg.run_dir)
    run_training(cfg, resume=str(kept[0]))  # redo steps 5-6 from the step-4 checkpoint
    assert max_difference(final, weights(cfg.run_dir)) == 0.0


def test_gradient_accumulation_matches_a_larger_batch(tiny_sft_model, pairs_file, tmp_path):
    large = run_training(config(tmp_path, tiny_sft_model, pairs_file, "--name=large", "--train.steps=3"))
    accumulated = run_training(config(tmp_path, tiny_sft_model, pairs_file, "--name=accum", "--train.steps=3",
                               "--train.batch_size=2", "--train.grad_accum=4"))
    # Same gradients up to summation order; Adam amplifies that rounding in near-zero coordinates.
    for a, b in zip(metrics(large), metrics(accumulated)):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5) and math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-5)
    assert max_difference(weights(large), weights(accumulated)) < 1e-4


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_sft_model, pairs_file, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name_or_path: {tiny_sft_model}}}\nloss: {{dpo: {{beta: 0.5}}}}\n"
                      f"data: {{source: {pairs_file}, max_length: 32, max_prompt_length: 16}}\n"
                      "train: {steps: 4, batch_size: 8, lr: 1.0e-3, progress: false}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "preftune", "train", "--config", str(recipe),
                          f"--output_dir={tmp_path}/one"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "preftune", "train", "--config", str(recipe), f"--output_dir={tmp_path}/two",
                          "--train.batch_size=4"], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("run directory:") == 1  # only the main process reports
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 8
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-4
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        assert math.isclose(a["loss"], b["loss"], abs_tol=1e-5) and math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-4)


def test_lora_uses_the_policy_with_adapters_disabled_as_reference(tiny_sft_model, pairs_file, tmp_path):
    from peft import PeftModel
    from preftune.models import load_causal_lm

    cfg = config(tmp_path, tiny_sft_model, pairs_file, "--name=lora", "--train.steps=3", "--model.lora.enabled=true",
                 "--model.lora.r=4")
    run_dir = run_training(cfg)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["reference"] == "lora-disabled"
    first = metrics(run_dir)[0]
    # LoRA's B matrices start at zero, so at step 1 the policy equals the adapter-free reference.
    assert math.isclose(first["loss"], math.log(2), abs_tol=1e-6) and first["margin"] == 0.0
    assert (run_dir / "model" / "adapter_config.json").exists()
    base = load_causal_lm(tiny_sft_model)
    adapted = PeftModel.from_pretrained(load_causal_lm(tiny_sft_model), str(run_dir / "model"))
    ids = torch.tensor([[1, 21, 25, 13, 22, 26, 31]])
    assert not torch.allclose(base(ids).logits, adapted(ids).logits)
    with adapted.disable_adapter():
        assert torch.allclose(base(ids).logits, adapted(ids).logits)


def test_bf16_precision_trains(tiny_sft_model, pairs_file, tmp_path):
    run_dir = run_training(config(tmp_path, tiny_sft_model, pairs_file, "--name=bf16", "--train.steps=2",
                           "--train.precision=bf16"))
    assert all(math.isfinite(m["loss"]) for m in metrics(run_dir))


def test_metrics_cover_what_users_watch(tiny_sft_model, pairs_file, tmp_path):
    run_dir = run_training(config(tmp_path, tiny_sft_model, pairs_file, "--name=metrics", "--train.steps=2",
                           "--data.eval_fraction=0.25"))
    logged = metrics(run_dir)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "margin", "accuracy", "logps/chosen",
                "logps/rejected", "grad_norm", "lr", "tokens_per_s"):
        assert key in logged[0], key
    assert logged[-1]["eval/loss"] > 0 and "eval/accuracy" in logged[-1]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["data"]["train_examples"] == 72 and summary["data"]["eval_examples"] == 24
    card = (run_dir / "model" / "README.md").read_text()  # the model card (preftune/hub.py)
    assert "| training examples | 72 |" in card and "| held-out examples | 24 |" in card
    assert f"| eval/loss | {logged[-1]['eval/loss']:.4g} |" in card and "dpo:\n  beta: 0.5" in card


def test_sigterm_saves_the_last_completed_step(tiny_sft_model, pairs_file, tmp_path):
    import signal

    def terminate_at_step_two(step, _):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = config(tmp_path, tiny_sft_model, pairs_file, "--name=term", "--train.steps=4")
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, on_step_end=terminate_at_step_two)
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["step-0000002"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
