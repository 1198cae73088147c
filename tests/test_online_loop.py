"""The online loop: recipes, schedule resolution, pair builders, schedule hooks, and short runs of every method
on the tiny model (marked slow), including a run stopped mid-iteration and resumed."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from preftune.config import ConfigError
from preftune.methods import build_objective
from preftune.train.online import METHOD_DEFAULTS, resolve_schedule
from preftune.train.online_config import load_online_config
from preftune.train.online_hooks import Anchor, PolicySnapshots
from preftune.train.online_pairs import Group, build_rows, sample_labels

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "online").glob("*.yaml"))
METHODS = sorted(METHOD_DEFAULTS)


# -- recipes and schedules ----------------------------------------------------------------------------------

def test_there_is_a_recipe_for_every_online_method():
    assert set(METHODS) <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_and_resolves_its_schedule(recipe):
    cfg = load_online_config(recipe)
    objective = build_objective(cfg.loss)
    schedule = resolve_schedule(cfg, objective)
    method = objective.terms[0].spec.name
    assert recipe.stem.startswith(method) and cfg.iterations >= 3
    assert cfg.task == "intransitive" and cfg.warm_start.enabled
    assert schedule.reference == METHOD_DEFAULTS[method]["reference"]
    assert schedule.builder == METHOD_DEFAULTS[method]["builder"]


def test_schedule_defaults_and_explicit_settings():
    cfg = load_online_config(overrides=["--loss=egpo"])
    assert resolve_schedule(cfg, build_objective(cfg.loss)).phases == "extragradient"
    cfg = load_online_config(overrides=["--loss=egpo", "--schedule.phases=single"])  # plain online IPO
    assert resolve_schedule(cfg, build_objective(cfg.loss)).phases == "single"
    cfg = load_online_config(overrides=["--loss=mnpo", "--loss.mnpo.history_weights=[0.2, 0.3, 0.5]"])
    assert resolve_schedule(cfg, build_objective(cfg.loss)).history == 3
    cfg = load_online_config(overrides=["--loss=apo", "--schedule.momentum=0.0"])
    assert resolve_schedule(cfg, build_objective(cfg.loss)).momentum == 0.0


@pytest.mark.parametrize("overrides, message", [
    (["--loss=dpo", "--schedule.fast_slow.enabled=true"], "fast/slow"),
    (["--loss=ofs_dpo", "--schedule.fast_slow.enabled=false"], "fast/slow"),
    (["--loss=sppo", "--pairs.builder=opponent"], "opponent"),
    (["--loss=sppo", "--schedule.reference=frozen"], "reference"),
    (["--loss=kto"], "label"),
])
def test_schedule_errors_name_the_problem(overrides, message):
    cfg = load_online_config(overrides=overrides)
    with pytest.raises(ValueError, match=message):
        resolve_schedule(cfg, build_objective(cfg.loss))


def test_domains_split_the_iterations_and_cofs_needs_them():
    from preftune.train.online import OnlineLoop

    loop = OnlineLoop.__new__(OnlineLoop)
    loop.cfg, loop.tasks = load_online_config(overrides=["--iterations=5"]), [None, None]
    assert [loop.domain_of(t) for t in range(5)] == [0, 0, 0, 1, 1]
    assert [loop.last_iteration_of(d) for d in (0, 1)] == [2, 4]
    cfg = load_online_config(overrides=["--loss=ofs_dpo", "--schedule.fast_slow.cofs=true"])
    with pytest.raises(ValueError, match="domains"):
        OnlineLoop(cfg, [None], [None], None, None, None, None, None, None, object(), None)


def test_unknown_online_config_key_is_an_error():
    with pytest.raises(ConfigError, match="schedule"):
        load_online_config(overrides=["--schedule.speed=2"])


def test_evaluation_takes_the_test_or_the_validation_guests():
    from preftune.tasks import get_task
    from preftune.train.online_state import OnlineLoop

    assert load_online_config().eval.split == "test"
    with pytest.raises(ConfigError, match="eval.split"):
        load_online_config(overrides=["--eval.split=train"])
    cfg = load_online_config(overrides=["--eval.split=validation", "--eval.prompts=5",
                                        "--task_options.validation_fraction=0.1"])
    task = get_task("intransitive", **cfg.task_options)
    loop = OnlineLoop(cfg, [task], [None], None, None, None, None, None, None, None, SimpleNamespace(device="cpu"))
    assert loop.eval_prompts == task.prompts("validation")[:5]
    assert not set(loop.eval_prompts) & set(loop.train_prompts)


# -- pair builders -----------------------------------------------------------------------------------------

M = [[0.5, 0.9, 0.4, 0.8], [0.1, 0.5, 0.7, 0.2], [0.6, 0.3, 0.5, 0.6], [0.2, 0.8, 0.4, 0.5]]


def group(matrix=M, texts=("a", "b", "c", "d")):
    return Group("p", list(texts), [list(row) for row in matrix])


def test_win_rates_include_the_sample_itself_as_sppo_does():
    assert group().win_rates() == pytest.approx([(0.5 + 0.9 + 0.4 + 0.8) / 4, (0.1 + 0.5 + 0.7 + 0.2) / 4,
                                                 (0.6 + 0.3 + 0.5 + 0.6) / 4, (0.2 + 0.8 + 0.4 + 0.5) / 4])


def test_best_worst_pairs_the_extremes_with_their_targets():
    row, = build_rows("best_worst", [group()])
    assert row.picks == (0, 1) and row.preference == 0.9
    assert row.win_rate == pytest.approx([0.65, 0.375])
    assert row.soft_label == pytest.approx(1 / (1 + math.exp(0.375 - 0.65)))  # DNO Alg. 1's label


def test_best_worst_on_two_samples_gives_egpo_the_variance_reduced_target():
    row, = build_rows("best_worst", [group([[0.5, 0.3], [0.7, 0.5]], ("x", "y"))])
    assert row.picks == (1, 0) and row.win_rate[0] - row.win_rate[1] == pytest.approx(0.7 - 0.5)


def test_all_pairs_orders_by_preference_and_respects_the_margin():
    rows = build_rows("all_pairs", [group()], margin=0.25)
    assert sorted(r.picks for r in rows) == [(0, 1), (0, 3), (3, 1)]


def test_tournament_follows_the_brackets_and_drops_an_intransitive_final():
    # Round 1: 0 beats 1, 2 beats 3. Winners: 2 beats 0 -> y_w = 2. Losers: 3 beats 1 -> y_l = 1.
    # Final check P(2 > 1) = 0.3 < 1/2: the pair is dropped (the cycle shows up here).
    assert build_rows("tournament", [group()]) == []
    transitive = [[0.5, 0.9, 0.8, 0.7], [0.1, 0.5, 0.6, 0.6], [0.2, 0.4, 0.5, 0.8], [0.3, 0.4, 0.2, 0.5]]
    row, = build_rows("tournament", [group(transitive)])
    assert row.picks == (0, 3)


def test_tournament_of_eight_asks_eleven_questions():
    asked = set()

    class Recording(list):
        def __getitem__(self, i):
            row = super().__getitem__(i)

            class Row(list):
                def __getitem__(self, j):
                    asked.add((min(i, j), max(i, j)))
                    return super().__getitem__(j)
            return Row(row)

    strength = [3, 7, 1, 5, 2, 8, 6, 4]
    matrix = [[0.5 if i == j else float(strength[i] > strength[j]) for j in range(8)] for i in range(8)]
    g = Group("p", [str(k) for k in range(8)], Recording(matrix))
    g.win_rates = lambda: [0.5] * 8
    row, = build_rows("tournament", [g])
    assert row.picks == (5, 2) and len(asked) == 11


def test_dno_margin_makes_hard_large_margin_pairs():
    rows = build_rows("dno_margin", [group()], margin=0.3, min_positive=0.6)
    # scores (wins over the 3 others): 0 -> 2/3, 1 -> 1/3, 2 -> 2/3, 3 -> 1/3
    assert sorted(r.picks for r in rows) == [(0, 1), (0, 3), (2, 1), (2, 3)]
    assert all(r.soft_label == 1.0 for r in rows)


def test_identical_texts_never_make_a_pair_and_missing_verdicts_are_skipped():
    assert build_rows("best_worst", [group([[0.5, 0.9], [0.1, 0.5]], ("same", "same"))]) == []
    assert build_rows("all_pairs", [group([[0.5, None], [None, 0.5]], ("x", "y"))]) == []


def test_opponent_rows_carry_the_mean_win_rate_against_the_opponent():
    g = Group("p", ["a", "b"], [], [[0.9, 0.7], [0.2, None]])
    rows = build_rows("opponent", [g])
    assert [(r.picks, r.win_rate) for r in rows] == [((0,), [pytest.approx(0.8)]), ((1,), [0.2])]


def test_bernoulli_labels_are_binary_complementary_and_follow_p():
    groups = [group() for _ in range(400)]
    sample_labels(groups, random.Random(0))
    assert all(g.matrix[0][1] + g.matrix[1][0] == 1 and g.matrix[0][1] in (0.0, 1.0) for g in groups)
    assert abs(sum(g.matrix[0][1] for g in groups) / 400 - 0.9) < 0.05


# -- schedule hooks ------------------------------------------------------------------------------------------

def model_and_snapshots():
    model = torch.nn.Linear(3, 2)
    return model, PolicySnapshots(dict(model.named_parameters()))


def test_snapshots_swap_in_and_out():
    model, snapshots = model_and_snapshots()
    snapshots.save("before")
    original = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    with snapshots.swapped("before"):
        assert torch.equal(model.weight, original)
    assert torch.equal(model.weight, original + 1.0)


def test_history_shift_pads_with_the_oldest_policy():
    model, snapshots = model_and_snapshots()
    weights = []
    for step in range(3):
        with torch.no_grad():
            model.weight.fill_(float(step))
        names = snapshots.shift_history(2)
        weights.append([float(snapshots.saved[n]["weight"][0, 0]) for n in names])
    assert weights == [[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]]


def test_momentum_with_alpha_zero_leaves_the_weights_bit_for_bit():
    model, snapshots = model_and_snapshots()
    snapshots.save("momentum")
    with torch.no_grad():
        model.weight.mul_(1.7).add_(0.3)
    trained = model.weight.detach().clone()
    snapshots.extrapolate("momentum", 0.0)
    assert torch.equal(model.weight, trained)


def test_momentum_extrapolates_and_remembers_the_trained_weights():
    model, snapshots = model_and_snapshots()
    previous = model.weight.detach().clone()
    snapshots.save("momentum")
    with torch.no_grad():
        model.weight.add_(2.0)
    snapshots.extrapolate("momentum", 0.3)
    assert torch.allclose(model.weight, previous + 2.0 + 0.3 * 2.0)
    assert torch.allclose(snapshots.saved["momentum"]["weight"], previous + 2.0)


def test_anchor_restores_weights_and_optimizer_state():
    model, snapshots = model_and_snapshots()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)

    def step():
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    anchor = Anchor(snapshots, optimizer)
    weights, moments = model.weight.detach().clone(), optimizer.state[model.weight]["exp_avg"].clone()
    step()
    step()
    anchor.restore()
    assert torch.equal(model.weight, weights)
    assert torch.equal(optimizer.state[model.weight]["exp_avg"], moments)
    assert int(optimizer.state[model.weight]["step"]) == 1


# -- short runs on the tiny model ---------------------------------------------------------------------------

def tiny_overrides(tmp_path, iterations=2):
    # An untrained tiny model rarely answers within the task, so binary labels are drawn from the
    # panel's probabilities (ties included): every iteration has pairs to train on.
    return [f"--output_dir={tmp_path}/{{name}}", "--warm_start.enabled=false", f"--iterations={iterations}",
            "--prompts_per_iteration=4", "--sampler.max_new_tokens=4", "--sampler.batch_size=16",
            "--train.steps=2", "--train.batch_size=4", "--train.progress=false", "--eval.prompts=2",
            "--eval.samples_per_prompt=2", "--judge.labels=bernoulli"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_online_iterations_on_the_tiny_model(method, tmp_path):
    from preftune.train.online import run_online

    cfg = load_online_config(Path(__file__).resolve().parents[1] / "configs" / "online" / f"{method}.yaml",
                             tiny_overrides(tmp_path))
    run_dir = run_online(cfg)
    summary = json.loads((run_dir / "online_summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == [0, 1, 2]
    assert all(0 <= r["duality_gap"] <= 1 and 0 <= r["win_rate_vs_initial"] <= 1 for r in summary["iterations"])
    assert summary["iterations"][0]["win_rate_vs_initial"] == pytest.approx(0.5)
    assert (run_dir / "online_curve.png").stat().st_size > 0 and (run_dir / "model").exists()
    for t in (0, 1):
        directory = run_dir / "iterations" / f"iter-{t:03d}"
        samples, pairs, steps = (read_jsonl(directory / f) for f in ("samples.jsonl", "pairs.jsonl", "metrics.jsonl"))
        assert len(samples) >= 4 and pairs and steps
        assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)
        phases = {s["phase"] for s in steps}
        assert phases == ({"half", "full"} if method in ("egpo", "nash_mp") else {"full"})
    if method == "nash_mp":
        assert all(len(s["opponents"]) == 2 for s in read_jsonl(run_dir / "iterations" / "iter-000" / "samples.jsonl"))
    if method == "ofs_dpo":
        assert all("slow_dpo_loss" in s and "chase_loss" in s for s in steps)
    if method == "dno":
        assert all(p["soft_label"] == 1.0 for p in read_jsonl(run_dir / "iterations" / "iter-001" / "pairs.jsonl"))


@pytest.mark.slow
def test_a_stopped_run_resumes_at_the_iteration_it_stopped_in(tmp_path):
    from preftune.train.online import run_online

    recipe = Path(__file__).resolve().parents[1] / "configs" / "online" / "apo.yaml"  # momentum state too
    whole = run_online(load_online_config(recipe, tiny_overrides(tmp_path / "whole", 3)))

    def stop_in_iteration_two(iteration, step, metrics):
        if iteration == 1 and step == 1:
            raise KeyboardInterrupt

    cfg = load_online_config(recipe, tiny_overrides(tmp_path / "stopped", 3))
    with pytest.raises(KeyboardInterrupt):
        run_online(cfg, on_step_end=stop_in_iteration_two)
    stopped = cfg.run_dir
    assert (stopped / "checkpoints" / "iter-001").exists() and not (stopped / "checkpoints" / "iter-002").exists()
    run_online(cfg, resume=True)
    first, second = (json.loads((d / "online_summary.json").read_text()) for d in (whole, stopped))
    for a, b in zip(first["iterations"], second["iterations"], strict=True):
        assert a["iteration"] == b["iteration"]
        assert a["duality_gap"] == pytest.approx(b["duality_gap"], abs=1e-9)
        assert a["win_rate_vs_initial"] == pytest.approx(b["win_rate_vs_initial"], abs=1e-9)
    # The stopped iteration was redone from its start, not appended to: its files match the whole run's.
    for name in ("samples.jsonl", "pairs.jsonl"):
        assert read_jsonl(stopped / "iterations" / "iter-001" / name) == read_jsonl(whole / "iterations" / "iter-001" / name)
    losses = [[s["loss"] for s in read_jsonl(d / "iterations" / "iter-001" / "metrics.jsonl")] for d in (whole, stopped)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    weights = [torch.load(d / "checkpoints" / "iter-003" / "state.pt", weights_only=False)["weights"]
               for d in (whole, stopped)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])


@pytest.mark.slow
@pytest.mark.method("ofs_dpo", "value")
def test_cofs_combines_the_fast_adapters_of_two_domains(tmp_path):
    from preftune.train.online import run_online

    recipe = Path(__file__).resolve().parents[1] / "configs" / "online" / "ofs_dpo_domains.yaml"
    run_dir = run_online(load_online_config(recipe, tiny_overrides(tmp_path, 2) + ["--schedule.fast_slow.cofs_memory=4"]))
    rows = json.loads((run_dir / "online_summary.json").read_text())["iterations"]
    assert [r.get("domain") for r in rows] == [None, 0, 1]
    assert "cofs_weight" not in rows[1] and 0 <= rows[2]["cofs_weight"] <= 1
    # w = 0 (this domain's adapter alone) is on the grid, so the chosen w never does worse on the memory.
    assert rows[2]["cofs_memory_loss"] <= rows[2]["cofs_memory_loss_without"] and rows[2]["cofs_memory_rows"] > 0
    assert all(f"domain{d}/duality_gap" in r for r in rows for d in (0, 1))
    # The two panels are different games: the same policy has different gaps under them.
    assert rows[0]["domain0/duality_gap"] != pytest.approx(rows[0]["domain1/duality_gap"])


@pytest.mark.slow
@pytest.mark.method("ofs_dpo", "gradient")
def test_ofs_dpo_trains_both_adapters_the_slow_one_at_its_own_rate(tmp_path):
    """Both LoRA adapters move during an iteration, the slow one at slow_lr_ratio x the fast one's rate.

    Adam moves a weight whose gradient keeps its sign by about lr per step, so over a few steps the largest
    change of each adapter's B matrices is about steps x its learning rate: their ratio is the lr ratio."""
    from preftune.train.online import run_online

    recipe = Path(__file__).resolve().parents[1] / "configs" / "online" / "ofs_dpo.yaml"
    cfg = load_online_config(recipe, tiny_overrides(tmp_path, 1) + ["--train.steps=3",
                                                                     "--schedule.fast_slow.slow_lr_ratio=0.25"])
    run_dir = run_online(cfg)
    state = torch.load(run_dir / "checkpoints" / "iter-001" / "state.pt", weights_only=False)
    initial, trained = state["snapshots"]["initial"], state["weights"]
    fast, slow = (torch.cat([(trained[k] - initial[k]).abs().flatten() for k in initial
                             if f".{adapter}." in k and "lora_B" in k]) for adapter in ("a", "b"))
    assert float(fast.max()) == pytest.approx(3 * cfg.train.lr, rel=0.05)
    assert float(slow.max()) == pytest.approx(0.25 * float(fast.max()), rel=0.02)
    assert 0.15 < float(slow.mean()) / float(fast.mean()) < 0.35
    # The slow adapter learns: its DPO loss leaves log 2, and the chasing term is no longer plain DPO's loss.
    logged = read_jsonl(run_dir / "iterations" / "iter-000" / "metrics.jsonl")
    assert logged[-1]["slow_dpo_loss"] < math.log(2) - 1e-3
    assert logged[-1]["chase_loss"] > logged[-1]["dpo_loss"] + 1e-3


@pytest.mark.slow
def test_the_loop_takes_a_local_reward_model_as_its_judge(tmp_path):
    """judge.kind: reward_model, an AutoModelForSequenceClassification saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from preftune.models import build_tiny_tokenizer
    from preftune.train.online import run_online

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    recipe = Path(__file__).resolve().parents[1] / "configs" / "online" / "sppo.yaml"
    overrides = tiny_overrides(tmp_path, 1) + ["--judge.kind=reward_model", "--judge.labels=probability",
                                               f"--judge.options={{path: {tmp_path / 'rm'}}}"]
    run_dir = run_online(load_online_config(recipe, overrides))
    summary = json.loads((run_dir / "online_summary.json").read_text())
    pairs = read_jsonl(run_dir / "iterations" / "iter-000" / "pairs.jsonl")
    assert pairs and all(0 < p["preference"] < 1 for p in pairs)  # Bradley-Terry probabilities, not hard labels
    assert summary["judge"][0]["requests"] > 0 and summary["judge"][0]["failed"] == 0


@pytest.mark.slow
def test_two_processes_share_the_sampling_judging_and_training_and_end_with_one_model(tmp_path):
    """online_dpo for 2 iterations on 2 processes (tests/distributed_online.py): each samples and judges every
    other prompt, the rows are gathered, each trains on its half of every batch with averaged gradients."""
    import os
    import subprocess
    import sys
    import types

    from preftune.tasks import get_task
    from preftune.train.online_collect import prompts_for

    root = Path(__file__).resolve().parents[1]
    overrides = [*tiny_overrides(tmp_path), "--prompts_per_iteration=8", "--name=two"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(root / "tests" / "distributed_online.py"), str(root / "configs" / "online" / "online_dpo.yaml"),
                           str(tmp_path), *overrides], env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = {(tmp_path / f"rank-{r}.txt").read_text() for r in (0, 1)}
    assert len(digests) == 1  # every process took the same steps
    run_dir = tmp_path / "two"
    summary = json.loads((run_dir / "online_summary.json").read_text())
    assert summary["processes"] == 2 and [r["iteration"] for r in summary["iterations"]] == [0, 1, 2]
    cfg = load_online_config(root / "configs" / "online" / "online_dpo.yaml", overrides)
    loop = types.SimpleNamespace(cfg=cfg, train_prompts=get_task(cfg.task).prompts("train"))
    random.Random(cfg.train.seed).shuffle(loop.train_prompts)
    for t in (0, 1):
        directory = run_dir / "iterations" / f"iter-{t:03d}"
        samples, pairs, steps = (read_jsonl(directory / f) for f in ("samples.jsonl", "pairs.jsonl", "metrics.jsonl"))
        assert sorted(s["prompt"] for s in samples) == sorted(prompts_for(loop, t))  # every prompt once, both shares
        assert pairs and [s["step"] for s in steps] == [1, 2]  # the main process logs each step once
        row = summary["iterations"][t + 1]
        assert row["full/rows"] == len(pairs) and row["full/samples"] == 16


# -- a judge that fails stops the run ------------------------------------------------------------------------

def llm_judge_overrides(tmp_path, server, iterations=2):
    return tiny_overrides(tmp_path, iterations) + [
        "--judge.kind=llm", f"--judge.options={{base_url: {server.url}, api_key: wrong-key, max_retries: 0}}"]


@pytest.mark.slow
def test_a_rejected_judge_key_stops_the_run_at_its_first_request(tmp_path, capsys):
    from judge_server import ScriptedServer

    from preftune.cli import main

    recipe = Path(__file__).resolve().parents[1] / "configs" / "online" / "online_dpo.yaml"
    with ScriptedServer(lambda user: (401, "invalid api key", 0.0)) as server:
        code = main(["online", "--config", str(recipe), *llm_judge_overrides(tmp_path, server)])
    error = capsys.readouterr().err
    assert code == 2 and len(server.requests) == 1
    assert "HTTP 401" in error and "judge.options.api_key was refused" in error and "OPENAI_API_KEY" in error


@pytest.mark.slow
@pytest.mark.parametrize("fails_from", ["iteration 2", "iteration 1's evaluation"])
def test_a_judge_that_fails_stops_the_run_after_saving_what_was_done(fails_from, tmp_path, capsys):
    """The judge answers and then only fails (HTTP 500). From iteration 2 on: iteration 2 stops once it has judged
    its samples (nothing is trained on them). From iteration 1's training on: iteration 1 stops after its
    evaluation, its checkpoint written first. Either way the message has the counts and the first error,
    iteration 1 is saved, the counters are printed every iteration and the report shows them."""
    import itertools
    import math
    import re
    import threading

    from judge_server import ScriptedServer

    from preftune.judges import JudgeError
    from preftune.report.html import build_report
    from preftune.train.online import run_online

    recipe = Path(__file__).resolve().parents[1] / "configs" / "online" / "online_dpo.yaml"
    cfg = load_online_config(recipe, tiny_overrides(tmp_path, 3))
    evaluation = cfg.eval.prompts * cfg.eval.samples_per_prompt  # requests of one evaluation's win-rate
    judging = cfg.prompts_per_iteration * math.comb(cfg.sampler.samples_per_prompt, 2)  # of one iteration's samples
    answers, lock, broken = itertools.count(), threading.Lock(), threading.Event()
    # From iteration 2: iteration 0's evaluation and iteration 1 are answered; else the judge breaks in training.
    answered = evaluation + judging + evaluation if fails_from == "iteration 2" else math.inf

    def reply(user):
        with lock:
            number = next(answers)
        return (500, "model overloaded", 0.0) if broken.is_set() or number >= answered else (200, "A", 0.0)

    with ScriptedServer(reply) as server:
        cfg = load_online_config(recipe, llm_judge_overrides(tmp_path, server, 3))
        with pytest.raises(JudgeError) as stopped:
            run_online(cfg, on_step_end=lambda iteration, step, metrics: answered == math.inf and broken.set())
    message = str(stopped.value)
    where, failed, asked = ("iteration 2, judging the samples (full)", judging, judging) if fails_from == "iteration 2" \
        else ("iteration 1", evaluation, judging + evaluation)
    assert message.startswith(f"{where}: the judge failed on {failed} of {asked} requests ({failed} failed, "
                              "0 unparseable), more than judge.max_failure_rate = 0.2"), message
    assert "HTTP 500" in message and "model overloaded" in message
    run_dir = cfg.run_dir
    assert (run_dir / "checkpoints" / "iter-001").exists() and not (run_dir / "checkpoints" / "iter-002").exists()
    summary = json.loads((run_dir / "online_summary.json").read_text())
    assert summary["stopped"] == message and [r["iteration"] for r in summary["iterations"]] == [0, 1]
    first = summary["iterations"][1]["judge"]  # iteration 1: its samples judged, then its evaluation
    assert first["requests"] == judging + evaluation
    assert first["failed"] == (0 if fails_from == "iteration 2" else evaluation)
    assert re.search(r"iteration 1/3: .*judge: \d+ requests, \d+ failed, 0 unparseable, 0 retries", capsys.readouterr().out)
    page = build_report(run_dir, tmp_path / "report.html").read_text()
    assert "The run stopped" in page and "first error" in page and "model overloaded" in page
