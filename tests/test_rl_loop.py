"""`preftune rl` end to end on the tiny model: every recipe of configs/rl trains for a few steps, the modules
that should move move (and the ones that should not, do not), and a stopped run resumed is the
uninterrupted run, bit for bit. The runs are small and marked slow."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from preftune.rl.config import LotSizingRunConfig, RLConfig, load_rl_config
from preftune.rl.loop import run_rl
from preftune.tabular.expected import single_threaded

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "configs" / "rl").glob("*.yaml"))
SMALL = ["--warm_start.enabled=false", "--iterations=2", "--rollout.prompts_per_iteration=4",
         "--rollout.samples_per_prompt=2", "--rollout.max_new_tokens=8", "--eval.prompts=4", "--eval.samples_per_prompt=1",
         "--eval.max_new_tokens=8", "--train.progress=false", "--train.batch_size=4", "--oreo.prompts=8",
         "--oreo.samples_per_prompt=2", "--oreo.beams=2", "--reward.samples=16", "--reward.steps=4", "--value.steps=4",
         "--dapo.states=4", "--dapo.critic_prompts=4", "--dapo.completions=2", "--dapo.candidates=2",
         "--mcts.simulations=2", "--mcts.root_multiplier=1"]
SMALL_LOT_SIZING = ["--updates=3", "--episodes_per_update=4", "--epochs=3", "--eval_every=3", "--train.progress=false",
                    "--train.checkpoint_every=1"]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """A second tiny model (another seed) standing in for RTO's DPO policy."""
    from preftune.models import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("dpo") / "model", seed=3))


def recipe(name: str, tmp_path: Path, *overrides: str, dpo: str | None = None):
    cfg = load_rl_config(ROOT / "configs" / "rl" / f"{name}.yaml", [f"--output_dir={tmp_path}/{{name}}"])
    small = SMALL_LOT_SIZING if isinstance(cfg, LotSizingRunConfig) else SMALL + ([f"--dpo.path={dpo}"] if dpo else [])
    return load_rl_config(ROOT / "configs" / "rl" / f"{name}.yaml",
                          [f"--output_dir={tmp_path}/{{name}}", *small, *overrides])


def parameters(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_trains_for_a_few_steps(name, tmp_path, other_model):
    with single_threaded():
        run_dir = run_rl(recipe(name, tmp_path, dpo=other_model))
    summary = json.loads((run_dir / "rl_summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if name in ("grpo", "pdppo"):  # `preftune report` draws the run's curves
        from preftune.report.html import build_report

        page = build_report(run_dir).read_text()
        assert "RL: " in page and page.count("data:image/png;base64") == 1
    if summary["kind"] == "lot-sizing":
        assert summary["final"]["eval/expected_return"] <= summary["optimum"] + 1e-9
        assert [r["step"] for r in rows] == [1, 2, 3] and (run_dir / "model.pt").exists()
        return
    assert [row["iteration"] for row in summary["iterations"]] == [0, 1, 2]
    assert all("eval/gold_reward" in row for row in summary["iterations"])
    assert (run_dir / "model" / "config.json").exists()
    trained = [r for r in rows if "train/loss" in r]
    assert trained and all(r["train/steps"] >= 1 for r in trained) or name == "mcts_dpo"
    if name in ("ppo", "rto", "oreo"):
        assert (run_dir / "value_model" / "value_head.json").exists()


@pytest.mark.slow
def test_the_policy_and_the_critic_move_and_the_reference_does_not(tmp_path):
    from preftune.methods import build_objective
    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.rl.context import RLContext
    from preftune.rl.data_rollouts import RolloutMaker
    from preftune.rl.pretrain import prepare_models
    from preftune.rl.update import update
    from preftune.tasks import get_task
    from preftune.train.loop import make_accelerator, release_accelerator

    cfg = recipe("ppo", tmp_path, "--rollout.prompts_per_iteration=8")
    accelerator = make_accelerator(cfg)
    tokenizer = load_tokenizer("builtin:tiny")
    policy = load_causal_lm("builtin:tiny", tokenizer=tokenizer)
    ctx = RLContext(cfg, get_task("multistep"), tokenizer, policy, build_objective(cfg.loss), accelerator.device, tmp_path)
    prepare_models(ctx, "rollouts", "builtin:tiny")
    torch.nn.init.normal_(ctx.value_model.head.linear.weight, std=0.1)  # a critic that is not flat
    before = {"policy": parameters(policy), "critic": parameters(ctx.value_model), "reference": parameters(ctx.reference)}
    optimizer = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": 1e-3},
                                   {"params": list(ctx.value_model.parameters()), "lr": 1e-3}])
    with single_threaded():
        rows, units, _ = RolloutMaker(ctx).make(0)
        for row in rows:  # rewards that differ, so the advantages are not all zero
            row.values["score"] = float(len(row.responses[0]) % 3)
        update(ctx, rows, units, 0, policy, optimizer, accelerator)
    release_accelerator()
    moved = {name: max(float((after[k] - before[name][k]).abs().max()) for k in after)
             for name, after in (("policy", parameters(policy)), ("critic", parameters(ctx.value_model)),
                                 ("reference", parameters(ctx.reference)))}
    assert moved["policy"] > 0 and moved["critic"] > 0 and moved["reference"] == 0, moved


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "ppo"])
def test_stop_and_resume_gives_the_uninterrupted_run(name, tmp_path):
    overrides = ["--iterations=3"]
    with single_threaded():
        straight = run_rl(recipe(name, tmp_path, "--name=straight", *overrides))

        def stop_in_iteration_three(iteration, step, _):
            if iteration == 3 and step == 1:
                raise KeyboardInterrupt

        cfg = recipe(name, tmp_path, "--name=resumed", *overrides)
        with pytest.raises(KeyboardInterrupt):
            run_rl(cfg, on_step_end=stop_in_iteration_three)
        assert not (cfg.run_dir / "model").exists()
        run_rl(cfg, resume=True)
    a, b = weights(straight), weights(cfg.run_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    lines = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, cfg.run_dir)]
    assert [r["step"] for r in lines[1]] == [0, 1, 2, 3]
    assert [r.get("train/loss") for r in lines[0]] == [r.get("train/loss") for r in lines[1]]


@pytest.mark.slow
def test_lot_sizing_stop_and_resume_gives_the_uninterrupted_run(tmp_path):
    with single_threaded():
        straight = run_rl(recipe("pdppo", tmp_path, "--name=straight"))

        def stop_after_two(update, _step, _metrics):
            if update == 2:
                raise KeyboardInterrupt

        cfg = recipe("pdppo", tmp_path, "--name=resumed")
        with pytest.raises(KeyboardInterrupt):
            run_rl(cfg, on_step_end=stop_after_two)
        run_rl(cfg, resume=True)
    a, b = torch.load(straight / "model.pt"), torch.load(cfg.run_dir / "model.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


def test_configs_parse_and_reject_unknown_keys():
    from preftune.config import ConfigError

    assert isinstance(load_rl_config(ROOT / "configs/rl/pdppo.yaml"), LotSizingRunConfig)
    assert isinstance(load_rl_config(ROOT / "configs/rl/oreo.yaml"), RLConfig)
    with pytest.raises(ConfigError, match="unknown key 'rollout.samples'"):
        load_rl_config(ROOT / "configs/rl/grpo.yaml", ["--rollout.samples=3"])


def test_objectives_outside_rl_are_refused():
    from preftune.methods import build_objective
    from preftune.rl.loop import algorithm_of

    with pytest.raises(ValueError, match="trained by `preftune train`"):
        algorithm_of(build_objective("dpo"))


@pytest.mark.slow
def test_a_value_head_on_the_policy_backbone_trains_with_it(tmp_path):
    with single_threaded():
        run_dir = run_rl(recipe("ppo", tmp_path, "--value.shared_backbone=true", "--iterations=1"))
    assert (run_dir / "model" / "value_head.json").exists() and not (run_dir / "value_model").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/steps"] >= 1 and "train/value_loss" in rows[-1]
