"""Running state of stateful methods (methods/state.py): the RunningMean, its registration, the objective that
owns it, and the trainer that syncs, freezes and checkpoints it (BCO's reward shift is the first user)."""
from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import pytest
import torch

from preftune.methods import build_objective, get, register, registry, taxonomy
from preftune.methods.state import RunningMean
from preftune.records import Logps, MethodOutput

F64 = torch.float64


def pair(chosen, rejected) -> Logps:
    sums = torch.stack([torch.as_tensor(chosen, dtype=F64).reshape(-1), torch.as_tensor(rejected, dtype=F64).reshape(-1)], -1)
    return Logps(sum=sums, length=torch.ones_like(sums))


# -- RunningMean ---------------------------------------------------------------------------------

def test_running_mean_is_the_count_weighted_mean_of_everything_seen():
    state = RunningMean()
    assert state.update(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2.0)
    assert state.update(torch.tensor([[10.0]])).item() == pytest.approx(16.0 / 4)  # (1+2+3+10)/4, not (2+10)/2
    assert (state.total, state.count) == (16.0, 4.0)


def test_frozen_state_reads_without_updating_and_falls_back_to_the_batch_before_any_update():
    state = RunningMean()
    state.frozen = True
    assert state.update(torch.tensor([4.0, 6.0])).item() == 5.0 and state.count == 0
    state.frozen = False
    state.update(torch.tensor([1.0]))
    state.frozen = True
    assert state.update(torch.tensor([100.0])).item() == 1.0 and state.count == 1


def test_sync_sums_the_batch_statistics_over_processes():
    # Two processes that saw the same batch: the all-reduced sum and count double, the mean does not change.
    state = RunningMean()
    seen = []
    state.sync = lambda stats: (seen.append(stats.clone()), 2 * stats)[1]
    assert state.update(torch.tensor([1.0, 3.0])).item() == 2.0
    assert (state.total, state.count) == (8.0, 4.0)
    assert seen[0].dtype == F64 and seen[0].tolist() == [4.0, 2.0]


def test_running_mean_state_dict_round_trip_keeps_the_dtype_and_device_of_the_batch():
    state = RunningMean()
    state.update(torch.tensor([0.5, 1.5], dtype=torch.float32))
    restored = RunningMean()
    restored.load_state_dict(pickle.loads(pickle.dumps(state.state_dict())))
    assert (restored.total, restored.count) == (2.0, 2.0)
    value = restored.update(torch.tensor([3.0], dtype=torch.float32))
    assert value.dtype == torch.float32 and value.item() == pytest.approx(5.0 / 3)


# -- registration ---------------------------------------------------------------------------------

@pytest.fixture
def temporary_name():
    name = f"_test_stateful_{uuid.uuid4().hex}"
    yield name
    registry._REGISTRY.pop(name, None)


def _meta(name, **overrides):
    meta = dict(name=name, seed=None, family="test", input_kind="pairwise", needs_reference=False,
                taxonomy=taxonomy(["pairwise"], ["offline"], ["reference-free"], []), paper="none", state=RunningMean)
    meta.update(overrides)
    return meta


def _mean_shifted(policy, *, scale=1.0, state=None):
    shift = policy.sum.detach().mean() if state is None else state.update(policy.sum)
    return MethodOutput(scale * (policy.sum[:, 0] - shift), policy.sum)


def test_a_stateful_method_gets_state_from_the_objective_and_state_is_no_hyperparameter(temporary_name):
    register(**_meta(temporary_name))(_mean_shifted)
    spec = get(temporary_name)
    assert spec.hyperparameters == {"scale": 1.0} and spec.as_dict()["running_state"] is True
    with pytest.raises(ValueError, match="no hyperparameter 'state'"):
        spec.validate_params({"state": None})
    objective = build_objective(temporary_name)
    assert objective.has_state and isinstance(objective.terms[0].state, RunningMean)
    objective(pair([1.0, 3.0], [2.0, 2.0]), None)
    objective(pair([5.0], [7.0]), None)
    # The state saw both batches: mean of (1, 2, 3, 2, 5, 7) = 20/6.
    assert objective.terms[0].state.mean == pytest.approx(20 / 6)


def test_registering_a_state_requires_a_keyword_state_argument_defaulting_to_none(temporary_name):
    def no_state(policy, *, scale=1.0):
        return MethodOutput(policy.sum[:, 0], policy.sum)

    def required_state(policy, *, state, scale=1.0):
        return MethodOutput(policy.sum[:, 0], policy.sum)

    for fn in (no_state, required_state):
        with pytest.raises(TypeError):
            register(**_meta(temporary_name))(fn)
    assert temporary_name not in registry._REGISTRY


def test_a_stateless_objective_has_no_state():
    objective = build_objective("dpo + 0.1*sft")
    assert not objective.has_state and objective.state_dict() == {}
    assert get("dpo").as_dict()["running_state"] is False


# -- the objective owns, freezes and checkpoints it ----------------------------------------------------

def test_each_term_has_its_own_state_and_the_state_dict_round_trips():
    objective = build_objective({"bco_pair": {"beta": 1.0}, "dpo": {}})
    assert [t.state is not None for t in objective.terms] == [True, False]
    objective(pair([-1.0, -2.0], [-3.0, -1.0]), pair([0.0, 0.0], [0.0, 0.0]))
    saved = objective.state_dict()
    assert list(saved) == ["0:bco_pair"] and saved["0:bco_pair"] == {"total": -7.0, "count": 4.0}
    fresh = build_objective({"bco_pair": {"beta": 1.0}, "dpo": {}})
    fresh.load_state_dict(saved)
    assert fresh.terms[0].state.mean == pytest.approx(-7.0 / 4)
    with pytest.raises(ValueError, match="running state"):
        build_objective("dpo").load_state_dict(saved)


def test_frozen_state_context_blocks_updates_and_restores_afterwards():
    objective = build_objective("bco_pair")
    policy, reference = pair([-1.0], [-2.0]), pair([0.0], [0.0])
    objective(policy, reference)
    with objective.frozen_state():
        objective(pair([5.0], [5.0]), reference)
        assert objective.terms[0].state.count == 2
    objective(policy, reference)
    assert objective.terms[0].state.count == 4


def test_sync_state_reaches_every_state():
    objective = build_objective({"bco_pair": {}, "nca_pair": {}})
    calls = []
    objective.sync_state(lambda stats: (calls.append(1), stats)[1])
    objective(pair([-1.0], [-2.0]), pair([0.0], [0.0]))
    assert calls == [1]


# -- the trainer: checkpointed, resumed, frozen during evaluation ---------------------------------------

@pytest.mark.slow
def test_training_checkpoints_resumes_and_never_moves_the_shift_on_held_out_batches(tiny_sft_model, tmp_path):
    """bco_pair for 2 steps, checkpoint every step, held-out evaluation after every step; then resume to 3.

    Each step adds batch_size * 2 = 8 rewards to the running mean, so the step-2 checkpoint holds count 16
    and the step-3 one 24: 24 only if resuming restored the state (a fresh one would hold 8) and the
    evaluations in between (run after each checkpoint) did not add their rewards.
    """
    from preftune.config import load_config
    from preftune.train.runner import run_training

    recipe = Path(__file__).resolve().parents[1] / "configs" / "methods" / "bco_pair.yaml"
    overrides = [f"--output_dir={tmp_path}/{{name}}", f"--model.name_or_path={tiny_sft_model}",
                 "--train.batch_size=4", "--train.progress=false", "--data.task.prompts=96",
                 "--data.eval_fraction=0.25", "--train.eval_every=1", "--train.checkpoint_every=1",
                 "--train.keep_checkpoints=5"]
    run_dir = run_training(load_config(recipe, overrides + ["--train.steps=2"]))
    run_training(load_config(recipe, overrides + ["--train.steps=3"]), resume=True)

    def saved_state(step):
        files = sorted((run_dir / "checkpoints" / f"step-{step:07d}").glob("custom_checkpoint_*.pkl"))
        states = [torch.load(f, weights_only=False) for f in files]
        return [s for s in states if "0:bco_pair" in s][0]["0:bco_pair"]

    assert saved_state(1)["count"] == 8 and saved_state(2)["count"] == 16 and saved_state(3)["count"] == 24
    assert saved_state(3)["total"] != saved_state(2)["total"]
