"""Every training diagnostic on a case where its value is known (eval/diagnostics.py).

Pure functions: uniform, one-hot and a hand-computed 4-token distribution for the top-k
indicators (offline.md §12 tests), analytic KLs, hand-counted accuracies. Models: a bigram
"table" model whose teacher-forced quantities are computed here by hand, and a tiny Llama whose
weights are all zero, so that every next-token distribution is exactly uniform.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from preftune.data.tokenize import TokenizedExample
from preftune.eval.diagnostics import (TrainingDiagnostics, implicit_reward_accuracy, monte_carlo_kl,
                                       teacher_forced_statistics, token_kl, topk_entropy_and_mass)


# --------------------------------------------------------------------------- top-k indicators

@pytest.mark.parametrize("vocab", [10, 50, 259])
def test_uniform_logits_give_log2_k_entropy_and_k_over_v_mass(vocab):
    entropy, mass = topk_entropy_and_mass(torch.zeros(3, 5, vocab), k=10)
    assert torch.allclose(entropy, torch.full((3, 5), math.log2(10), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(mass, torch.full((3, 5), 10 / vocab, dtype=torch.float64), atol=1e-8)


def test_one_hot_distribution_gives_zero_entropy_and_full_mass():
    logits = torch.full((2, 30), float("-inf"))
    logits[0, 7] = 0.0
    logits[1, 29] = 3.0
    for renormalize in (True, False):
        entropy, mass = topk_entropy_and_mass(logits, k=10, renormalize=renormalize)
        assert torch.equal(entropy, torch.zeros(2, dtype=torch.float64))
        assert torch.allclose(mass, torch.ones(2, dtype=torch.float64))


def test_hand_computed_four_token_distribution_with_k_2():
    # p = (0.1, 0.4, 0.2, 0.3): the top 2 are 0.4 and 0.3, so M_2 = 0.7.
    logits = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64).log()
    entropy, mass = topk_entropy_and_mass(logits, k=2)
    assert float(mass) == pytest.approx(0.7, abs=1e-12)
    # renormalised (4/7, 3/7): 4/7 log2(7/4) + 3/7 log2(7/3) = 0.461346 + 0.523882
    assert float(entropy) == pytest.approx(0.985228, abs=1e-6)
    # unnormalised: 0.4 log2(1/0.4) + 0.3 log2(1/0.3) = 0.528771 + 0.521090
    raw_entropy, _ = topk_entropy_and_mass(logits, k=2, renormalize=False)
    assert float(raw_entropy) == pytest.approx(1.049861, abs=1e-6)


# --------------------------------------------------------------------------- KL and accuracy

def test_token_kl_of_two_known_distributions():
    p = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([0.25, 0.75]).log()
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln 2 + 0.5 ln(2/3)
    assert float(token_kl(p, q)) == pytest.approx(0.143841, abs=1e-6)
    assert float(token_kl(q, q)) == pytest.approx(0.0, abs=1e-12)
    assert float(token_kl(q + 5.0, q)) == pytest.approx(0.0, abs=1e-12)  # logits are shift-invariant


def test_monte_carlo_kl_converges_to_the_exact_kl():
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = float((p * (p / q).log()).sum())  # 0.6 ln 3 + 0.1 ln 0.2 = 0.498230
    draws = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = monte_carlo_kl(p.log()[draws], q.log()[draws])
    assert exact == pytest.approx(0.498230, abs=1e-5)
    assert estimate == pytest.approx(exact, abs=0.01)


def test_implicit_reward_accuracy_counts_correct_orderings_and_not_ties():
    policy = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [0.0, 0.0], [-2.0, -5.0]])
    reference = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    # log-ratio margins: +1 (right), -1 (wrong), 0 (tie: not right), -1 - (-4) = +3 (right)
    assert implicit_reward_accuracy(policy, reference) == pytest.approx(0.5)


# --------------------------------------------------------------------------- on models

class BigramTable(nn.Module):
    """A causal LM whose next-token logits depend only on the current token: logits = table[token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


def _by_hand(table: torch.Tensor, prompt: list[int], response: list[int]):
    """log p(response | prompt), and per response position the H_2 and M_2 and the logits row used."""
    ids = prompt + response
    logp, rows = 0.0, []
    for position in range(len(prompt), len(ids)):
        row = table[ids[position - 1]]
        probs = torch.softmax(row.double(), -1)
        logp += math.log(float(probs[ids[position]]))
        rows.append(row)
    return logp, rows


def test_teacher_forced_statistics_match_a_hand_computation_on_a_bigram_model():
    torch.manual_seed(0)
    vocab = 6
    policy_table, reference_table = torch.randn(vocab, vocab), torch.randn(vocab, vocab)
    examples = [TokenizedExample([1, 3], [[4, 5, 2], [5, 2]], "pairwise"),
                TokenizedExample([1], [[3, 2], [4, 4, 4, 2]], "pairwise")]
    # The statistics are computed in float32, as on real models: agreement to ~1e-6.
    stats = teacher_forced_statistics(BigramTable(policy_table), BigramTable(reference_table), examples,
                                      pad_token_id=0, k=2)
    for i, example in enumerate(examples):
        for j, response in enumerate(example.response_ids):
            logp, rows = _by_hand(policy_table, example.prompt_ids, response)
            ref_logp, ref_rows = _by_hand(reference_table, example.prompt_ids, response)
            assert float(stats["policy_logps"][i, j]) == pytest.approx(logp, abs=1e-5)
            assert float(stats["reference_logps"][i, j]) == pytest.approx(ref_logp, abs=1e-5)
            assert float(stats["policy_logps_per_token"][i, j]) == pytest.approx(logp / len(response), abs=1e-5)
            entropies, masses, kls = [], [], []
            for row, ref_row in zip(rows, ref_rows):
                probs = sorted(torch.softmax(row.double(), -1).tolist(), reverse=True)[:2]
                masses.append(sum(probs))
                entropies.append(-sum(p / sum(probs) * math.log2(p / sum(probs)) for p in probs))
                p, q = torch.softmax(row.double(), -1), torch.softmax(ref_row.double(), -1)
                kls.append(float((p * (p / q).log()).sum()))
            assert float(stats["topk_entropy"][i, j]) == pytest.approx(sum(entropies) / len(rows), abs=1e-5)
            assert float(stats["topk_mass"][i, j]) == pytest.approx(sum(masses) / len(rows), abs=1e-5)
            assert float(stats["token_kl"][i, j]) == pytest.approx(sum(kls) / len(rows), abs=1e-5)


@pytest.fixture(scope="module")
def uniform_model():
    """The built-in tiny Llama with every weight zero: all logits are 0, every distribution uniform."""
    from preftune.models import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return model, tokenizer


@pytest.mark.slow
def test_monitor_on_a_uniform_model_reports_the_uniform_values(uniform_model):
    from preftune.tasks import get_task

    model, tokenizer = uniform_model
    vocab = len(tokenizer)
    examples = [TokenizedExample(tokenizer(f"{a}+{a}=")["input_ids"], [tokenizer(str(2 * a))["input_ids"][1:] + [2],
                                                                       tokenizer("7")["input_ids"][1:] + [2]], "pairwise")
                for a in range(10, 30)]
    n, prompts = 6, get_task("arithmetic").prompts("test", 25)
    monitor = TrainingDiagnostics(examples, tokenizer, prompts=prompts, task=get_task("arithmetic"), top_k=10,
                                  samples_per_prompt=8, max_new_tokens=n)
    metrics = monitor(model, model)
    assert metrics["diag/logps_per_token/chosen"] == pytest.approx(-math.log(vocab), abs=1e-6)
    assert metrics["diag/logps/rejected"] == pytest.approx(-2 * math.log(vocab), abs=1e-6)  # "7" + EOS
    assert metrics["diag/top10_entropy"] == pytest.approx(math.log2(10), abs=1e-6)
    assert metrics["diag/top10_mass"] == pytest.approx(10 / vocab, abs=1e-8)
    assert metrics["diag/token_kl"] == 0.0 and metrics["diag/kl"] == 0.0
    assert metrics["diag/reward_accuracy"] == 0.0  # policy = reference: every pair is a tie
    # Uniform sampling of n tokens: EOS (prob 1/V) ends a response and counts in its length;
    # without an EOS the sampler drops pad tokens (prob 1/(V-1) among the rest).
    p = 1 / vocab
    expected = sum(j * p * (1 - p) ** (j - 1) for j in range(1, n + 1)) + (1 - p) ** n * n * (1 - 1 / (vocab - 1))
    standard_error = math.sqrt(n * n * (1 - (1 - p) ** n) + 0.05) / math.sqrt(200)
    assert metrics["diag/length"] == pytest.approx(expected, abs=4 * standard_error)
    assert metrics["diag/gold_reward"] == 0.0  # random bytes never spell a sum in this many prompts


@pytest.mark.slow
def test_training_loop_logs_diagnostics_at_step_zero_every_n_steps_and_at_the_end(tmp_path, uniform_model):
    import json

    from preftune.config import load_config
    from preftune.models import save_tiny_model
    from preftune.train.runner import run_training

    base = save_tiny_model(tmp_path / "base")
    rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a in range(8) for b in range(8)]
    cfg = load_config(None, [f"--output_dir={tmp_path}/{{name}}", f"--model.name_or_path={base}", "--loss=simpo",
                             "--data.source=task:arithmetic", "--data.eval_fraction=0.25", "--train.steps=5",
                             "--train.batch_size=8", "--train.lr=1e-3", "--train.progress=false", "--diagnostics.every=2",
                             "--diagnostics.prompts=4", "--diagnostics.max_new_tokens=4"])
    run_dir = run_training(cfg, data_source=rows)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in logged if "diag/top10_entropy" in m]
    assert steps == [0, 2, 4, 5]
    first = next(m for m in logged if m["step"] == 0 and "diag/kl" in m)
    last = [m for m in logged if "diag/kl" in m][-1]
    # simpo is reference-free: a frozen copy of the initial policy is the measuring reference,
    # so KL starts at exactly 0 and grows as the policy moves.
    assert first["diag/kl"] == 0.0 and first["diag/token_kl"] == 0.0
    assert last["diag/token_kl"] > 0.0
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["diagnostics"] == {"every": 2, "examples": 16, "examples_from": "held-out"}


# --------------------------------------------------------------------------- warnings read from trajectories

def _rows(entropy, mass, chosen, rejected, gold=None):
    rows = []
    for i, values in enumerate(zip(entropy, mass, chosen, rejected)):
        row = dict(zip(["diag/top10_entropy", "diag/top10_mass", "diag/logps/chosen", "diag/logps/rejected"], values))
        if gold is not None:
            row["diag/gold_reward"] = gold[i]
        rows.append({"step": 10 * i, **row})
    return rows


def test_peak_before_end_finds_a_turn_and_ignores_monotone_or_flat_ends():
    from preftune.eval.diagnostics import peak_before_end

    assert peak_before_end([1.0, 2.0, 3.0, 2.5, 2.0]) == 2
    assert peak_before_end([1.0, 2.0, 3.0, 4.0]) is None
    assert peak_before_end([1.0, 3.0, 2.999]) is None  # a fall within 1% of the peak is noise
    assert peak_before_end([1.0, 2.0]) is None


def test_warnings_name_the_turn_the_leak_the_collapse_and_the_gold_peak():
    from preftune.eval.diagnostics import diagnostic_warnings

    warnings = diagnostic_warnings(_rows(entropy=[2.0, 2.5, 2.8, 2.4, 2.1], mass=[0.9, 0.85, 0.8, 0.7, 0.6],
                                         chosen=[-5, -6, -7, -8, -9], rejected=[-5, -8, -12, -16, -20],
                                         gold=[0.5, 0.6, 0.7, 0.65, 0.6]))
    assert len(warnings) == 4
    assert "rose until step 20 and then fell" in warnings[0]
    assert "leaking outside the top 10" in warnings[1]
    assert "rejected one faster" in warnings[2]
    assert "gold reward peaked at step 20 (0.700)" in warnings[3]


def test_no_warnings_for_healthy_trajectories():
    from preftune.eval.diagnostics import diagnostic_warnings

    assert diagnostic_warnings(_rows(entropy=[2.0, 2.2, 2.4], mass=[0.9, 0.9, 0.91], chosen=[-5, -4.5, -4],
                                     rejected=[-5, -6, -7], gold=[0.5, 0.6, 0.7])) == []
