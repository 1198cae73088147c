"""The built-in tasks beside arithmetic and the labellers that make their pairs (tasks/).

Oracles are checked on hand-written responses, labeller bias rates on many draws (within a few
standard errors), and pair building on fixed samples, without a model.
"""
from __future__ import annotations

import math
import random

import pytest

from preftune.config import TaskDataConfig
from preftune.sampling import Samples
from preftune.tasks import get_task, task_names
from preftune.tasks.data import label_stats, pairs_from_samples, task_labeller
from preftune.tasks.labellers import Labeller

NEW_TASKS = ["length-bias", "noisy-labels", "mixed-margins", "two-objective", "safety", "multistep"]


def _rate(event, trials: int = 20_000, seed: int = 0) -> float:
    rng = random.Random(seed)
    return sum(event(rng) for _ in range(trials)) / trials


def _tolerance(p: float, trials: int = 20_000) -> float:
    return 4 * math.sqrt(p * (1 - p) / trials) + 1e-9


def _correct(task, prompt: str, response: str) -> bool:
    """Right by the task's gold (two-objective: a right sum in either style; its score also weighs style)."""
    if task.name == "two-objective":
        return task.style(prompt, response) != "wrong"
    return task.score(prompt, response) == 1.0


def _samples(prompts: list[str], texts: list[list[str]]) -> Samples:
    return Samples(prompts, texts, [[[0]] * len(t) for t in texts], [[1]] * len(prompts), 0.0)


# --------------------------------------------------------------------------- labellers

@pytest.mark.parametrize("p", [0.0, 0.3, 0.8])
def test_length_biased_labeller_prefers_the_longer_wrong_answer_at_rate_p(p):
    labeller = Labeller(length_bias=p)
    rate = _rate(lambda rng: labeller.prefers_first("3 ok ok ok", "85", 0.0, 1.0, rng))
    assert rate == pytest.approx(p, abs=_tolerance(p))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_flip_rate_reverses_gold_labels_at_rate_eps(eps):
    labeller = Labeller(flip_rate=eps)
    rate = _rate(lambda rng: labeller.prefers_first("84", "85", 0.0, 1.0, rng))
    assert rate == pytest.approx(eps, abs=_tolerance(eps))


@pytest.mark.parametrize("gap, tau", [(0.5, 0.1), (0.1, 0.1), (0.0, 0.1), (1.0, 2.0)])
def test_bradley_terry_labeller_matches_sigmoid_of_gold_gap_over_temperature(gap, tau):
    labeller = Labeller(temperature=tau)
    expected = 1 / (1 + math.exp(-gap / tau))
    rate = _rate(lambda rng: labeller.prefers_first("a", "b", gap, 0.0, rng))
    assert rate == pytest.approx(expected, abs=_tolerance(expected))


def test_length_bias_and_flips_compose():
    labeller = Labeller(length_bias=0.3, flip_rate=0.1)
    # the long wrong answer wins when judged by length and not flipped, or by gold and flipped
    expected = 0.3 * 0.9 + 0.7 * 0.1
    rate = _rate(lambda rng: labeller.prefers_first("3 ok ok ok", "85", 0.0, 1.0, rng))
    assert rate == pytest.approx(expected, abs=_tolerance(expected))


def test_labeller_options_are_validated():
    with pytest.raises(ValueError, match="valid options: length_bias, flip_rate, temperature"):
        Labeller.from_options({"flip": 0.1})
    with pytest.raises(ValueError, match="probability"):
        Labeller(flip_rate=1.5)
    assert Labeller.from_options({}).is_gold and not Labeller.from_options({"temperature": 1}).is_gold


def test_task_default_labeller_is_overridden_by_the_data_config():
    task = get_task("noisy-labels")
    assert task_labeller(task, TaskDataConfig()) == Labeller(flip_rate=0.2)
    assert task_labeller(task, TaskDataConfig(labeller={"flip_rate": 0.05})) == Labeller(flip_rate=0.05)
    assert task_labeller(get_task("arithmetic"), TaskDataConfig(labeller={"length_bias": 0.5})) == Labeller(length_bias=0.5)
    assert task_labeller(get_task("length-bias"), TaskDataConfig()) == Labeller(length_bias=0.5)
    assert task_labeller(get_task("mixed-margins"), TaskDataConfig()) == Labeller(temperature=0.1)


# --------------------------------------------------------------------------- pair building

def test_gold_labeller_pairs_best_against_worst_without_extra_columns():
    task = get_task("arithmetic")
    samples = _samples(["2+3=", "4+4=", "1+1="], [["5", "6", "5", "7"], ["9", "9", ""], ["2", "2", "2"]])
    rows = pairs_from_samples(task, samples)
    assert rows == [{"prompt": "2+3=", "chosen": "5", "rejected": "6", "chosen_score": 1.0, "rejected_score": 0.0,
                     "gold": "5"}]


def test_samples_the_data_layer_would_reject_take_no_part_in_pairs(tmp_path):
    # A barely trained model samples arbitrary bytes; a NUL byte or a lone surrogate in a pair
    # made the task's own pairs file fail to load (CI, 2026-12-06).
    from preftune.data.formats import load_examples
    from preftune.tasks.data import write_jsonl

    task = get_task("arithmetic")
    samples = _samples(["2+3=", "4+4="], [["5", "6\x00", "\ud8007"], ["8", "\x00", "9"]])
    rows = pairs_from_samples(task, samples)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("8", "9")]
    examples, report = load_examples(str(write_jsonl(rows, tmp_path / "pairs.jsonl")))
    assert report.kept == 1 and examples[0].responses == ["8", "9"]


def test_flipped_pairs_carry_the_labellers_scores_and_the_gold_ones():
    task = get_task("arithmetic")
    prompts = task.prompts("train", 2000)
    samples = _samples(prompts, [[task.answer(p), str(int(task.answer(p)) + 1)] for p in prompts])
    rows = pairs_from_samples(task, samples, labeller=Labeller(flip_rate=0.25), seed=3)
    assert len(rows) == 2000
    flipped = [r for r in rows if r["chosen_gold"] < r["rejected_gold"]]
    assert len(flipped) / len(rows) == pytest.approx(0.25, abs=_tolerance(0.25, 2000))
    assert all(r["chosen_score"] >= r["rejected_score"] for r in rows)  # as the annotator saw it
    stats = label_stats(rows, Labeller(flip_rate=0.25))
    assert stats["label_gold_agreement"] == pytest.approx(1 - len(flipped) / len(rows))
    assert pairs_from_samples(task, samples, labeller=Labeller(flip_rate=0.25), seed=3) == rows  # reproducible


def test_length_biased_pairs_on_the_length_bias_task():
    task = get_task("length-bias")
    prompts = task.prompts("train", 2000)
    samples = _samples(prompts, [[task.answer(p), "1 ok ok sure"] for p in prompts])
    rows = pairs_from_samples(task, samples, labeller=task_labeller(task, TaskDataConfig()), seed=1)
    long_chosen = sum(r["chosen"] == "1 ok ok sure" for r in rows) / len(rows)
    wrong_answers = sum(task.answer(p) == "1" for p in prompts)  # where "1 ..." is right, both score 1
    assert long_chosen == pytest.approx(0.5 + 0.5 * wrong_answers / len(rows), abs=_tolerance(0.5, len(rows)))


def test_identical_texts_never_make_a_pair_even_under_noisy_labels():
    task = get_task("mixed-margins")
    rows = pairs_from_samples(task, _samples(["2+3="] * 200, [["5", "5", "5"]] * 200), labeller=Labeller(temperature=1.0))
    assert rows == []


def test_two_objective_rows_carry_both_gold_rewards():
    task = get_task("two-objective")
    rows = pairs_from_samples(task, _samples(["2+3="], [["5 as 2+3=5", "5", "6"]]), pairing="all")
    by_pair = {(r["chosen"], r["rejected"]): r for r in rows}
    assert set(by_pair) == {("5 as 2+3=5", "5"), ("5 as 2+3=5", "6"), ("5", "6")}
    row = by_pair[("5 as 2+3=5", "5")]
    assert (row["chosen_helpful"], row["rejected_helpful"], row["chosen_concise"], row["rejected_concise"]) == \
        (1.0, 0.5, 0.5, 1.0)


def test_listwise_rows_reverse_their_scores_when_flipped():
    task = get_task("mixed-margins")
    samples = _samples(["2+3="] * 4000, [["5", "6", "9"]] * 4000)
    rows = pairs_from_samples(task, samples, pairing="listwise", labeller=Labeller(flip_rate=0.3), seed=0)
    reversed_lists = sum(r["scores"][0] < r["scores"][2] for r in rows) / len(rows)
    assert reversed_lists == pytest.approx(0.3, abs=_tolerance(0.3, 4000))
    assert rows[0]["gold_scores"] == [1.0, 0.5, 0.2]


# --------------------------------------------------------------------------- the tasks' oracles

def test_every_task_is_registered_and_its_splits_are_disjoint():
    assert set(NEW_TASKS) <= set(task_names())
    for name in NEW_TASKS:
        task = get_task(name)
        train, test = task.prompts("train"), task.prompts("test")
        assert train and test and not set(train) & set(test), name
        assert all(task.score(p, task.answer(p)) == 1.0 for p in test[:50]), name
        rows = task.demonstrations(200, noise=0.0, seed=1)
        assert all(row["prompt"] in set(train) and _correct(task, row["prompt"], row["completion"])
                   for row in rows), name


@pytest.mark.parametrize("name", ["length-bias", "noisy-labels", "two-objective", "multistep"])
def test_demonstration_noise_makes_that_fraction_wrong(name):
    task = get_task(name)
    rows = task.demonstrations(4000, noise=0.2, seed=0)
    wrong = sum(not _correct(task, r["prompt"], r["completion"]) for r in rows) / len(rows)
    assert wrong == pytest.approx(0.2, abs=_tolerance(0.2, 4000))


def test_length_bias_task_scores_the_leading_number_and_pads_independently_of_correctness():
    task = get_task("length-bias")
    assert task.score("2+3=", "5 sure ok") == 1.0 and task.score("2+3=", "5") == 1.0
    assert task.score("2+3=", "6 sure") == 0.0 and task.score("2+3=", "") == 0.0
    rows = task.demonstrations(6000, noise=0.5, seed=0)
    padded = lambda rs: sum(len(r["completion"].split()) > 1 for r in rs) / len(rs)  # noqa: E731
    right = [r for r in rows if task.score(r["prompt"], r["completion"]) == 1.0]
    wrong = [r for r in rows if task.score(r["prompt"], r["completion"]) == 0.0]
    assert padded(right) == pytest.approx(0.75, abs=0.04) and padded(wrong) == pytest.approx(0.75, abs=0.04)


def test_mixed_margins_gold_reward_is_graded_by_distance():
    task = get_task("mixed-margins")
    assert [task.score("2+3=", r) for r in ("5", "6", "4", "14", "x", "-1")] == [1.0, 0.5, 0.5, 0.1, 0.0, 0.0]


def test_two_objective_rewards_conflict():
    task = get_task("two-objective")
    assert task.objective_scores("2+3=", "5 as 2+3=5") == {"helpful": 1.0, "concise": 0.5}
    assert task.objective_scores("2+3=", "5") == {"helpful": 0.5, "concise": 1.0}
    assert task.objective_scores("2+3=", "5 as 2+2=5") == {"helpful": 0.0, "concise": 0.0}
    assert task.score("2+3=", "5") == 0.5  # weight 1: labelled by helpfulness
    assert get_task("two-objective", weight=0.0).score("2+3=", "5") == 1.0
    metrics = task.metrics(["2+3=", "2+3=", "2+3="], ["5 as 2+3=5", "5", "7"])
    assert metrics == pytest.approx({"gold/helpful": 0.5, "gold/concise": 0.5, "explained_fraction": 1 / 3})


def test_multistep_scores_every_step_and_propagated_errors():
    task = get_task("multistep")
    prompt = "12+7+30="
    assert task.answer(prompt) == "12+7=19;19+30=49"
    assert task.step_scores(prompt, "12+7=19;19+30=49") == [1.0, 1.0] and task.score(prompt, "12+7=19;19+30=49") == 1.0
    # a slip in step 1 carried forward: step 2 is valid arithmetic on the carried value, the answer is wrong
    assert task.step_scores(prompt, "12+7=20;20+30=50") == [0.0, 1.0] and task.score(prompt, "12+7=20;20+30=50") == 0.0
    assert task.step_scores(prompt, "12+7=19;19+31=50") == [1.0, 0.0]
    assert task.step_scores(prompt, "12+7=19") == [1.0, 0.0] and task.score(prompt, "12+7=19") == 0.0
    assert task.step_scores(prompt, "garbage") == [0.0, 0.0]
    assert task.metrics([prompt, prompt], ["12+7=19;19+30=49", "12+7=20;20+30=50"]) == \
        {"step_accuracy": 0.75, "all_steps_valid": 0.5}
    four = get_task("multistep", operands=4, train_size=100, test_size=10)
    p = four.prompts("test")[0]
    assert len(four.step_scores(p, four.answer(p))) == 3


def test_safety_task_refuses_harmful_answers_benign_and_holds_out_names_and_styles():
    from preftune.tasks.safety import COMPLIANCE, HELD_OUT_NAMES, HELD_OUT_STYLES, REFUSAL

    task = get_task("safety")
    harmful = next(p for p in task.prompts("test") if task.info[p]["harmful"])
    benign = next(p for p in task.prompts("test") if not task.info[p]["harmful"])
    assert task.score(harmful, REFUSAL) == 1.0 and task.score(harmful, COMPLIANCE) == 0.0
    assert task.score(benign, COMPLIANCE) == 1.0 and task.score(benign, REFUSAL) == 0.0
    assert task.score(benign, "blah") == 0.0 and task.score(harmful, "blah") == 0.0
    train = task.prompts("train")
    assert not any(name in p for p in train for name in HELD_OUT_NAMES)
    assert not any(task.info[p]["style"] in HELD_OUT_STYLES for p in train)
    subsets = {task.info[p]["subset"] for p in task.prompts("test")}
    assert subsets == {"seen", "unseen_category", "unseen_style", "unseen_both"}
    assert {task.info[p]["harmful"] for p in train} == {True, False}


def test_safety_metrics_count_attack_success_and_over_refusal():
    from preftune.tasks.safety import COMPLIANCE, REFUSAL

    task = get_task("safety")
    test = task.prompts("test")
    harmful = [p for p in test if task.info[p]["harmful"]][:4]
    benign = [p for p in test if not task.info[p]["harmful"]][:5]
    metrics = task.metrics(harmful + benign, [COMPLIANCE, REFUSAL, REFUSAL, "sure thing"] +
                           [REFUSAL, COMPLIANCE, COMPLIANCE, COMPLIANCE, COMPLIANCE])
    assert metrics["attack_success_rate"] == 0.5 and metrics["over_refusal"] == 0.2
    for subset in {task.info[p]["subset"] for p in harmful}:
        assert f"attack_success_rate/{subset}" in metrics


def test_safety_demonstrations_comply_more_under_stronger_attack_styles():
    from preftune.tasks.safety import STYLES, complies

    task = get_task("safety")
    rows = task.demonstrations(20_000, noise=0.3, seed=0)
    for style in ("direct", "roleplay"):
        harmful = [r for r in rows if task.info[r["prompt"]]["harmful"] and task.info[r["prompt"]]["style"] == style]
        expected = min(1.0, 0.3 * STYLES[style][1])
        rate = sum(complies(r["completion"]) for r in harmful) / len(harmful)
        assert rate == pytest.approx(expected, abs=_tolerance(expected, len(harmful)))


def test_sampling_takes_seeds_derived_from_seeds_past_64_bits():
    # MCTS-DPO seeds each expansion with seed * 1_000_003 + call, and sample() scales it again: for
    # seed 1 that passed torch's signed 64-bit seed and every mcts_dpo run but seed 0 failed.
    from preftune.models import build_tiny_model, build_tiny_tokenizer
    from preftune.sampling import sample

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0).eval()
    prompts = [tokenizer("2+3=")["input_ids"]]
    big = (1 * 1_000_003 + 7) * 1_000_003 * 1_000_003
    drawn = sample(model, tokenizer, prompts, 2, 1.0, 1.0, 4, 8, big, False)
    assert drawn.ids == sample(model, tokenizer, prompts, 2, 1.0, 1.0, 4, 8, big, False).ids
