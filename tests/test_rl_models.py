"""Value and reward models, step segmentation, value-guided search and the `preftune rl` command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from preftune.models import build_tiny_tokenizer, load_causal_lm, save_tiny_model
from preftune.rl.search import value_guided_search
from preftune.rl.segment import first_step, split_steps, step_ids
from preftune.rl.value_model import ValueHead, ValueModel, last_token_values


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than two (and far faster on a loaded machine)."""
    from preftune.tabular.expected import single_threaded

    with single_threaded():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_value_model_round_trips_through_save_pretrained(tiny, tmp_path):
    model = ValueModel.from_pretrained(str(tiny), outputs=2, names=["helpful", "concise"])
    ids = torch.tensor([[1, 40, 41, 42]])
    assert model(ids, torch.ones_like(ids)).abs().max() == 0  # a fresh head is zero
    torch.nn.init.normal_(model.head.linear.weight)
    before = model(ids, torch.ones_like(ids))
    model.save_pretrained(tmp_path / "vm", build_tiny_tokenizer())
    again = ValueModel.from_pretrained(str(tmp_path / "vm"))
    assert again.head.names == ["helpful", "concise"] and again.outputs == 2
    torch.testing.assert_close(again(ids, torch.ones_like(ids)), before, rtol=0, atol=0)


def test_a_pickled_value_model_loads_only_when_allowed(tiny, tmp_path):
    model = ValueModel.from_pretrained(str(tiny))
    model.save_pretrained(tmp_path / "vm", build_tiny_tokenizer())
    (tmp_path / "vm" / "model.safetensors").unlink()  # the backbone's weights as older tools wrote them: a pickle
    torch.save(model.backbone.state_dict(), tmp_path / "vm" / "pytorch_model.bin")
    from preftune.model_source import ModelSourceError

    with pytest.raises(ModelSourceError, match="model.allow_pickle: true"):
        ValueModel.from_pretrained(str(tmp_path / "vm"))
    loaded = ValueModel.from_pretrained(str(tmp_path / "vm"), allow_pickle=True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_value_model_from_policy_copies_the_backbone_not_the_head(tiny):
    policy = load_causal_lm(str(tiny))
    model = ValueModel.from_policy(policy)
    ids = torch.tensor([[1, 40, 41]])
    hidden = policy(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(model.backbone(input_ids=ids).last_hidden_state, hidden)
    model.backbone.layers[0].mlp.up_proj.weight.data.add_(1.0)  # a copy: the policy is untouched
    assert not torch.equal(model.backbone.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)


def test_last_token_values_reads_each_rows_last_real_token():
    values = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert last_token_values(values, mask).tolist() == [[2.0, 3.0], [10.0, 11.0]]


def test_a_multi_output_head_fits_a_synthetic_linear_multi_target_problem():
    # online.md §13 Test (ii): K = 3 targets, each a linear function of the features, fitted by MSE.
    g = torch.Generator().manual_seed(0)
    features, truth = torch.randn(256, 16, generator=g), torch.randn(16, 3, generator=g)
    targets = features @ truth
    head = ValueHead(16, 3)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(500):
        loss = ((head(features) - targets) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    residual = ((head(features) - targets) ** 2).mean().detach() / targets.var()
    assert float(residual) < 1e-4
    torch.testing.assert_close(head.linear.weight.T, truth, atol=1e-2, rtol=0)


def test_steps_are_cut_after_the_separator():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer("12+7=19;19+30=49", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def decode(token):
        return tokenizer.decode([token])
    steps = split_steps(ids, decode, ";")
    assert [tokenizer.decode(s, skip_special_tokens=True) for s in steps] == ["12+7=19;", "19+30=49"]
    assert step_ids(ids, decode, ";") == [0] * 8 + [1] * 9
    assert first_step(ids, decode, ";") == steps[0]
    with pytest.raises(ValueError, match="non-empty"):
        step_ids(ids, decode, "")


def test_value_guided_search_returns_the_best_finished_answer(tiny):
    policy, tokenizer = load_causal_lm(str(tiny)), build_tiny_tokenizer()
    critic = ValueModel.from_policy(policy)
    torch.nn.init.normal_(critic.head.linear.weight, std=0.5)
    found = value_guided_search(policy, critic, tokenizer, ["1+2+3=", "4+5+6="], beams=2, separator=";",
                                max_new_tokens=6, seed=1)
    again = value_guided_search(policy, critic, tokenizer, ["1+2+3=", "4+5+6="], beams=2, separator=";",
                                max_new_tokens=6, seed=1)
    assert [r.ids for r in found] == [r.ids for r in again]  # seeded
    assert all(len(r.ids) <= 6 and r.text == tokenizer.decode(r.ids, skip_special_tokens=True) for r in found)


@pytest.mark.slow
def test_cli_rl_and_generate_with_a_value_model(tmp_path, tiny, capsys):
    from preftune.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["rl", "--config", str(root / "configs/rl/pdppo.yaml"), f"--output_dir={tmp_path}/{{name}}",
                 "--updates=2", "--episodes_per_update=2", "--epochs=2", "--eval_every=2",
                 "--train.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "DP optimum -7.1020" in out and (tmp_path / "pdppo" / "rl_summary.json").exists()
    critic = ValueModel.from_pretrained(str(tiny))
    critic.save_pretrained(tmp_path / "critic", build_tiny_tokenizer())
    assert main(["generate", "--model", str(tiny), "--value-model", str(tmp_path / "critic"), "--prompt", "1+2+3=",
                 "--separator", ";", "--beams", "2", "--max-new-tokens", "6", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["prompt"] == "1+2+3=" and "value" in line
    assert main(["rl", "--config", str(root / "configs/rl/grpo.yaml"), "--rollout.samples=3"]) == 2
