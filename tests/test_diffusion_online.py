"""Invariants of the online sources (preftune/diffusion/online.py) that an exact loss check cannot see:
Diffusion-DRO's lagging sampler copies the policy only every sync_every steps and its buffer is a FIFO
of buffer_size rollouts; D3PO's two trajectories of a pair start from the same noise; a group of DDPO/Flow-GRPO/AWM samples shares its condition and its advantages are centred
within it; a rollout is reused for updates_per_rollout steps, each sample used once."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

pytest.importorskip("diffusers")

from diffusion_helpers import quick_toy
from preftune.diffusion.config import load_diffusion_config
from preftune.diffusion.models import load_diffusion_model
from preftune.diffusion.rewards import build_reward
from preftune.diffusion.train import diffusion_objective, make_source

REPO = Path(__file__).resolve().parents[1]
ONE_PROCESS = SimpleNamespace(process_index=0, num_processes=1)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    return tmp_path_factory.mktemp("toys")


def online_source(recipe: str, toys: Path, tmp_path: Path, *overrides: str):
    """The recipe's online source on a quick toy of its base model's kind, as the trainer builds it."""
    base = yaml.safe_load((REPO / "configs" / "diffusion" / f"{recipe}.yaml").read_text())["model"]["name_or_path"]
    toy = quick_toy(toys, base.removeprefix("builtin:toy-"))
    cfg = load_diffusion_config(REPO / "configs" / "diffusion" / f"{recipe}.yaml",
                                [f"--model.name_or_path={toy}", f"--output_dir={tmp_path}/{{name}}", "--rollout.steps=3",
                                 "--rollout.prompts=4", "--train.batch_size=8", "--data.toy.positives=16",
                                 "--data.toy.steps=3", "--train.progress=false", *overrides])
    model = load_diffusion_model(str(toy), progress=False)
    reward = build_reward(cfg.reward, model.task)
    kind = diffusion_objective(cfg.loss).input_kind
    source, _, _ = make_source(cfg, kind, model, model.network, reward, ONE_PROCESS)
    return source, model.network


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_lagging_sampler_syncs_every_n_steps_and_the_buffer_is_fifo(toys, tmp_path):
    source, network = online_source("diffusion_dro", toys, tmp_path, "--rollout.sync_every=3", "--rollout.buffer_size=2")
    kept = []
    for step in range(7):
        with torch.no_grad():   # the policy moves every step, as training would move it
            for p in network.parameters():
                p.add_(0.01)
        source.micro_batches(step, "cpu", network)
        kept.append(source.buffer[-1])
        assert _same_weights(source.lagging, network) == (step % 3 == 0), step
        assert source.buffer == kept[-2:]   # the newest buffer_size rollouts, oldest first


def test_pair_trajectories_share_their_starting_noise(toys, tmp_path):
    source, network = online_source("d3po", toys, tmp_path)
    batches = source.micro_batches(0, "cpu", network)
    assert len(batches) == 2   # every stochastic step of the pair, one micro-batch each (the last DDIM step has no noise)
    seen_first = 0
    for batch in batches:
        first = batch.steps["t"][:, 0] == batch.steps["t"].max()   # rows at the pair's first step (x_T)
        seen_first += int(first.sum())
        assert torch.equal(batch.steps["t"][:, 0], batch.steps["t"][:, 1])   # both trajectories at one time
        assert torch.equal(batch.steps["x"][first, 0], batch.steps["x"][first, 1])
        assert not torch.equal(batch.steps["x_prev"][:, 0], batch.steps["x_prev"][:, 1])   # then they part
    assert seen_first == 4   # each pair's first step comes once across the micro-batches


@pytest.mark.parametrize("recipe", ["ddpo", "awm"])
def test_groups_share_a_condition_and_a_rollout_serves_its_updates_once(recipe, toys, tmp_path):
    source, network = online_source(recipe, toys, tmp_path, "--rollout.group_size=3", "--rollout.updates_per_rollout=2")
    first = source.micro_batches(0, "cpu", network)
    rollout = source.current
    groups = rollout["conditions"].reshape(4, 3, *rollout["conditions"].shape[1:])
    assert torch.equal(groups, groups[:, :1].expand_as(groups))
    assert torch.allclose(rollout["advantages"].reshape(4, 3).sum(1), torch.zeros(4), atol=1e-5)
    evaluations = source.reward_evaluations
    second = source.micro_batches(1, "cpu", network)
    assert source.current is rollout and source.reward_evaluations == evaluations   # the same rollout, no new reward
    if recipe == "awm":   # the two updates split the rollout's samples between them
        used = torch.cat([first[0].x0, second[0].x0])[:, 0]
        assert sorted(map(tuple, used.tolist())) == sorted(map(tuple, rollout["x0"].tolist()))
    source.micro_batches(2, "cpu", network)
    assert source.current is not rollout and source.reward_evaluations == evaluations + 12
