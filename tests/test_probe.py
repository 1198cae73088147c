"""The linear-separability probe (eval/probe.py, offline.md §17): known separable and
inseparable features, folds that never split a pair, and the command on a tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from preftune.eval.probe import auc, pair_folds, resolve_layers, separability


def test_gaussian_mean_shift_is_separated_almost_perfectly():
    g = torch.Generator().manual_seed(0)
    rejected = torch.randn(400, 16, generator=g)
    chosen = torch.randn(400, 16, generator=g) + 1.5  # distance 6 between the means: Bayes error ~ 1e-9
    result = separability(chosen, rejected, folds=5, seed=0)
    assert result.accuracy > 0.98 and result.auc > 0.99 and result.fisher_ratio > 3
    assert result.pairs == 400 and len(result.fold_accuracies) == 5


def test_identical_distributions_give_chance_accuracy():
    g = torch.Generator().manual_seed(1)
    result = separability(torch.randn(1500, 8, generator=g), torch.randn(1500, 8, generator=g), folds=5, seed=0)
    assert result.accuracy == pytest.approx(0.5, abs=0.04)
    assert result.auc == pytest.approx(0.5, abs=0.04)


def test_pair_folds_are_balanced_and_cover_every_pair():
    fold = pair_folds(103, folds=5, seed=3)
    counts = torch.bincount(fold, minlength=5)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    assert not torch.equal(fold, pair_folds(103, folds=5, seed=4))  # the seed matters


def test_folds_never_split_a_pair():
    # Chosen and rejected share their features exactly, so whatever a probe predicts for a test
    # pair, one of its two responses is right and one wrong: every fold scores exactly 0.5. A
    # fold that held one response of a pair and trained on the other could do better or worse.
    features = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    result = separability(features, features.clone(), folds=5, seed=0)
    assert result.fold_accuracies == [0.5] * 5 and result.accuracy == 0.5


def test_auc_counts_ties_as_half():
    assert auc(torch.tensor([3.0, 1.0, 2.0, 2.0]), torch.tensor([1, 0, 1, 0])) == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_layer_specs():
    assert resolve_layers("last", 4) == [4]
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers("0,-1", 4) == [0, 4]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="folds"):
        pair_folds(3, folds=5)
    with pytest.raises(ValueError, match="differ in shape"):
        separability(torch.zeros(5, 2), torch.zeros(5, 3))


@pytest.mark.slow
def test_probe_command_on_a_tiny_model_separates_an_obvious_cue(tmp_path, capsys):
    from preftune.cli import main
    from preftune.models import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    rows = [{"prompt": f"{a}+{b}=", "chosen": f"{a + b} yes", "rejected": f"{a + b + 1} no"} for a in range(10) for b in range(6)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["probe", "--model", str(model), "--data", str(data), "--layers", "0,-1", "--out", str(tmp_path / "probe"),
                 "--max-length", "32", "--max-prompt-length", "16"]) == 0
    report = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert report["pairs"] == 60 and set(report["layers"]) == {"0", "4"}
    # At the last response token (EOS) the embedding layer sees only EOS: nothing to separate;
    # the last layer has read " yes" vs " no" through attention, even untrained.
    assert report["layers"]["0"]["accuracy"] == 0.5
    assert report["layers"]["4"]["accuracy"] > 0.95
    assert (tmp_path / "probe" / "probe.png").stat().st_size > 1000
    assert "accuracy" in capsys.readouterr().out
