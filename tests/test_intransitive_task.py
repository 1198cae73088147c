"""The intransitive task: a cyclic majority of transitive annotators, exact oracle, exact LM distribution."""
import pytest
import torch

from preftune.models import build_tiny_model, build_tiny_tokenizer
from preftune.tabular import PreferenceModel, exploitability, nash_equilibrium
from preftune.tasks import get_task, task_names
from preftune.tasks.intransitive import CANONICAL, STYLES, game_metrics, style_distribution


@pytest.fixture(scope="module")
def task():
    return get_task("intransitive")


def test_registered_and_splits_are_disjoint(task):
    assert "intransitive" in task_names()
    train, test = task.prompts("train"), task.prompts("test")
    assert len(train) + len(test) == 225 and not set(train) & set(test)
    assert task.prompts("test", 5) == test[:5]
    with pytest.raises(KeyError, match="validation_fraction"):
        task.prompts("validation")


def test_a_validation_split_takes_guests_from_train_only():
    plain, held = get_task("intransitive"), get_task("intransitive", validation_fraction=0.16)
    validation = held.prompts("validation")
    assert len(validation) == 36 and held.prompts("test") == plain.prompts("test")
    assert set(held.prompts("train")) == set(plain.prompts("train")) - set(validation)
    assert not set(validation) & set(held.prompts("test"))
    with pytest.raises(ValueError, match="no train guests"):
        get_task("intransitive", test_fraction=0.6, validation_fraction=0.4)


def test_majority_of_transitive_annotators_is_a_cycle(task):
    P = task.preference_matrix()
    assert all(PreferenceModel.from_ranking(r).is_transitive() for r in ((0, 1, 2), (1, 2, 0), (2, 0, 1)))
    assert not P.is_transitive() and P.condorcet_winner() is None
    # formal > casual: annotators 1 and 3 say so (flip 0.1, 0.2), annotator 2 disagrees (flip 0.3).
    a, b, c = 0.9, 0.3, 0.8
    by_hand = a * b * c + a * (1 - b) * c + a * b * (1 - c) + (1 - a) * b * c
    assert float(P.matrix[0, 1]) == pytest.approx(by_hand)
    assert float(P.matrix[0, 1]) > 0.5 and float(P.matrix[1, 2]) > 0.5 and float(P.matrix[2, 0]) > 0.5


def test_nash_equilibrium_is_mixed_and_far_from_the_demonstrations(task):
    P = task.preference_matrix()
    ne = nash_equilibrium(P)
    assert (ne > 0.1).all() and exploitability(P, ne) == pytest.approx(0, abs=1e-12)
    assert exploitability(P, torch.tensor(task.reference_mix, dtype=torch.float64)) > 0.05


def test_style_of_accepts_only_exact_answers(task):
    for k, style in enumerate(STYLES):
        assert task.style_of(CANONICAL[style]) == k and task.style_of(f"  {CANONICAL[style]}\n") == k
    assert task.style_of(CANONICAL["formal"][:-1]) is None and task.style_of("") is None
    assert len({s[0] for s in CANONICAL.values()}) == 3  # the first byte decides the style


def test_compare_and_score(task):
    formal, casual, poetic = task.canonical_responses()
    P = task.preference_matrix().matrix
    assert task.compare("p", formal, casual) == pytest.approx(float(P[0, 1]))
    assert task.compare("p", casual, formal) == pytest.approx(1 - float(P[0, 1]))
    assert task.compare("p", formal, "hello") == 1.0 and task.compare("p", "hello", "hi") == 0.5
    assert task.score("p", poetic) == pytest.approx(float(P[2].mean())) and task.score("p", "x") == 0.0


def test_demonstrations_follow_the_reference_mix(task):
    rows = task.demonstrations(6000, seed=1)
    counts = torch.tensor([sum(task.style_of(r["completion"]) == k for r in rows) for k in range(3)]) / 6000.0
    assert torch.allclose(counts.double(), torch.tensor(task.reference_mix, dtype=torch.float64), atol=0.02)
    uniform = task.demonstrations(6000, noise=1.0, seed=1)
    assert abs(sum(task.style_of(r["completion"]) == 2 for r in uniform) / 6000 - 1 / 3) < 0.02


def test_style_distribution_is_the_softmax_of_sequence_logprobs():
    from preftune.data.tokenize import encode_prompt

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=3).double()
    prompts = ["Greet Ana: ", "Greet Bo: "]
    probs, mass = style_distribution(model, tokenizer, prompts)
    for i, prompt in enumerate(prompts):
        logps = []
        for response in CANONICAL.values():
            ids = encode_prompt(tokenizer, prompt) + tokenizer(response, add_special_tokens=False)["input_ids"] + \
                [tokenizer.eos_token_id]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
            start = len(encode_prompt(tokenizer, prompt))
            logps.append(sum(float(logits[t - 1, ids[t]]) for t in range(start, len(ids))))
        logps = torch.tensor(logps, dtype=torch.float64)
        # sequence_logps works in float32 (logps.py), hence the tolerance
        assert torch.allclose(probs[i], torch.softmax(logps, 0), atol=1e-6)
        assert float(mass[i]) == pytest.approx(float(logps.exp().sum()), rel=1e-5)


def test_game_metrics(task):
    P = task.preference_matrix()
    ne = nash_equilibrium(P)
    initial = torch.tensor([task.reference_mix] * 2, dtype=torch.float64)
    at_ne = game_metrics(P, torch.stack([ne, ne]), initial, beta=0.1)
    assert at_ne["duality_gap"] == pytest.approx(0, abs=1e-12)
    # An interior equilibrium ties with every response (A pi* = 0), hence with every policy.
    assert at_ne["win_rate_vs_initial"] == pytest.approx(0.5, abs=1e-12)
    at_start = game_metrics(P, initial, initial, beta=0.1)
    assert at_start["win_rate_vs_initial"] == pytest.approx(0.5)
    assert at_start["duality_gap"] == pytest.approx(2 * exploitability(P, initial[0]))
    assert at_start["duality_gap_regularised"] == pytest.approx(2 * exploitability(P, initial[0], 0.1, initial[0]))
