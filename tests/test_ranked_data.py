"""Ranked lists -> pairs and curriculum orders (data/ranked.py), and the batch plans a curriculum and
lists of varying K need (train/plan.py). Every expected pair is written out by hand."""
from __future__ import annotations

import pytest

from preftune.data.ranked import (build_pairs, curriculum_stages, easy_to_hard, pair_ease, pairs_from_ranked_rows,
                                  ranking, scores_of)
from preftune.train.plan import BatchPlan, batches_by_group

# The hand-built 4-response example: listed out of order, ratings 3, 5, 1, 4 (UltraFeedback-like).
#   ranked: R1 = "b" (5), R2 = "d" (4), R3 = "a" (3), R4 = "c" (1)
ROW = {"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [3.0, 5.0, 1.0, 4.0], "gold": "g"}


def texts(pairs, row=ROW):
    return [(row["responses"][p.chosen], row["responses"][p.rejected], p.gap) for p in pairs]


def test_ranking_is_best_first_and_stable_on_ties():
    assert ranking(ROW["scores"]) == [1, 3, 0, 2]
    assert ranking([2.0, 7.0, 2.0, 7.0]) == [1, 3, 0, 2]  # equal scores keep their order in the row


def test_chosen_fixed_pairs_are_the_papers_easiest_first():
    # Curry-DPO: (R1,R4) gap 4, (R1,R3) gap 2, (R1,R2) gap 1 -> easiest (largest gap) first.
    assert texts(build_pairs(ROW["scores"], "chosen_fixed")) == [("b", "c", 4.0), ("b", "a", 2.0), ("b", "d", 1.0)]
    assert build_pairs(ROW["scores"], "best_vs_rest") == build_pairs(ROW["scores"], "chosen_fixed")


def test_rejected_fixed_pairs():
    # (R1,R4) gap 4, (R2,R4) gap 3, (R3,R4) gap 2.
    assert texts(build_pairs(ROW["scores"], "rejected_fixed")) == [("b", "c", 4.0), ("d", "c", 3.0), ("a", "c", 2.0)]
    assert build_pairs(ROW["scores"], "worst_vs_rest") == build_pairs(ROW["scores"], "rejected_fixed")


def test_all_pairs_sorted_by_gap_then_rank_spread():
    # Gaps: R1R4 4, R2R4 3, R1R3 2, R3R4 2, R1R2 1, R2R3 1. Ties: the wider rank spread first
    # (R1R3 spans 2 ranks, R3R4 one), then the better chosen first (R1R2 before R2R3).
    assert texts(build_pairs(ROW["scores"], "all_pairs")) == [
        ("b", "c", 4.0), ("d", "c", 3.0), ("b", "a", 2.0), ("a", "c", 2.0), ("b", "d", 1.0), ("d", "a", 1.0)]


def test_ties_are_dropped_and_min_gap_filters():
    scores = [1.0, 1.0, 0.0, 0.5]
    # chosen_fixed: R1 = index 0; (R1, index 1) is a tie and says nothing.
    assert [(p.chosen, p.rejected) for p in build_pairs(scores, "chosen_fixed")] == [(0, 2), (0, 3)]
    assert [(p.chosen, p.rejected) for p in build_pairs(scores, "chosen_fixed", min_gap=0.6)] == [(0, 2)]
    assert build_pairs([2.0, 2.0], "all_pairs") == []


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="pair mode"):
        build_pairs([1.0, 0.0], "best_worst")


def test_ranks_are_read_as_scores():
    assert scores_of({"responses": ["x", "y", "z"], "ranks": [2, 1, 3]}) == [-2.0, -1.0, -3.0]
    with pytest.raises(ValueError, match="3 responses but 2"):
        scores_of({"responses": ["x", "y", "z"], "scores": [1, 2]})


def test_pair_rows_carry_scores_gaps_positions_and_other_columns():
    rows = pairs_from_ranked_rows([ROW, {"prompt": "q", "responses": ["u", "v"], "ranks": [2, 1]}])
    assert [(r["prompt"], r["chosen"], r["rejected"], r["score_gap"], r["list_index"], r["pair_index"])
            for r in rows] == [("p", "b", "c", 4.0, 0, 0), ("p", "b", "a", 2.0, 0, 1), ("p", "b", "d", 1.0, 0, 2),
                               ("q", "v", "u", 1.0, 1, 0)]
    assert rows[0]["chosen_score"] == 5.0 and rows[0]["rejected_score"] == 1.0
    assert rows[0]["gold"] == "g" and "gold" not in rows[3]
    assert not {"responses", "scores", "ranks"} & set(rows[0])


LISTS = [ROW, {"prompt": "q", "responses": ["e", "f", "h"], "scores": [0.0, 2.0, 1.0]}]


def test_iterative_stages_take_the_kth_easiest_pair_of_every_list():
    pairs = pairs_from_ranked_rows(LISTS)
    stages = curriculum_stages(pairs, pair_ease(pairs, "rating_gap"))
    # list q: R1 = f (2), R2 = h (1), R3 = e (0): chosen_fixed (f,e) gap 2, (f,h) gap 1.
    assert [[(p["prompt"], p["chosen"], p["rejected"]) for p in stage] for stage in stages] == [
        [("p", "b", "c"), ("q", "f", "e")], [("p", "b", "a"), ("q", "f", "h")], [("p", "b", "d")]]
    assert len(curriculum_stages(pairs, pair_ease(pairs, "rating_gap"), max_stages=2)) == 2


def test_reference_margin_reorders_the_stages():
    pairs = pairs_from_ranked_rows(LISTS)
    # The reference finds (b,d) easiest in list p and (f,h) easiest in list q.
    margins = [0.5, -1.0, 3.0, -2.0, 0.1]
    stages = curriculum_stages(pairs, pair_ease(pairs, "ref_implicit_margin", margins))
    assert [[(p["chosen"], p["rejected"]) for p in stage] for stage in stages] == [
        [("b", "d"), ("f", "h")], [("b", "c"), ("f", "e")], [("b", "a")]]
    with pytest.raises(ValueError, match="one reference log-prob margin per pair"):
        pair_ease(pairs, "ref_implicit_margin")


def test_sorted_run_is_stage_major_easiest_first_and_deterministic():
    pairs = pairs_from_ranked_rows(LISTS)
    ease = pair_ease(pairs, "rating_gap")
    # Stage 1 = {(b,c) gap 4, (f,e) gap 2}, stage 2 = {(b,a) 2, (f,h) 1}, stage 3 = {(b,d) 1}.
    order = [(p["chosen"], p["rejected"]) for p in easy_to_hard(pairs, ease)]
    assert order == [("b", "c"), ("f", "e"), ("b", "a"), ("f", "h"), ("b", "d")]
    shuffled = [(p["chosen"], p["rejected"]) for p in easy_to_hard(pairs, ease, shuffle_within=True, seed=3)]
    assert shuffled == [(p["chosen"], p["rejected"]) for p in easy_to_hard(pairs, ease, shuffle_within=True, seed=3)]
    # Shuffling stays inside a stage: the stages still come one after the other.
    assert set(shuffled[:2]) == set(order[:2]) and set(shuffled[2:4]) == set(order[2:4]) and shuffled[4] == order[4]


def test_random_difficulty_is_seeded():
    pairs = pairs_from_ranked_rows(LISTS)
    assert pair_ease(pairs, "random", seed=1) == pair_ease(pairs, "random", seed=1)
    assert pair_ease(pairs, "random", seed=1) != pair_ease(pairs, "random", seed=2)


def test_arithmetic_partial_credit_grades_wrong_numbers():
    from preftune.tasks import get_task

    graded, exact = get_task("arithmetic", partial_credit=True), get_task("arithmetic")
    assert [graded.score("12+30=", r) for r in ("42", " 42 ", "43", "33", "x", "4²", "")] == [1.0, 1.0, 0.5, 0.1, 0, 0, 0]
    assert [exact.score("12+30=", r) for r in ("42", "43")] == [1.0, 0.0]


# --------------------------------------------------------------------------- batch plans

def test_unshuffled_plan_takes_the_data_in_order_every_epoch():
    plan = BatchPlan(num_examples=10, batch_size=2, grad_accum=2, world_size=1, seed=0, epochs=2, shuffle=False)
    assert plan.total_steps == 4
    assert [plan.step_indices(s) for s in range(4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan.micro_batches(1, 0) == [[4, 5], [6, 7]]


def test_default_plan_is_unchanged_by_the_new_options():
    a = BatchPlan(num_examples=20, batch_size=4, grad_accum=1, world_size=1, seed=5, epochs=2)
    b = BatchPlan(num_examples=20, batch_size=4, grad_accum=1, world_size=1, seed=5, epochs=2, shuffle=True, groups=None)
    assert [a.step_indices(s) for s in range(a.total_steps)] == [b.step_indices(s) for s in range(b.total_steps)]
    assert sorted(i for s in range(5) for i in a.step_indices(s)) == list(range(20))


def test_grouped_plan_never_mixes_list_sizes():
    groups = (4, 3, 4, 4, 3, 3, 4, 5, 3, 4, 3, 4)  # K per example: six of K=4, five of K=3, one of K=5
    plan = BatchPlan(num_examples=len(groups), batch_size=2, grad_accum=1, world_size=1, seed=1, epochs=1,
                     groups=groups)
    assert plan.steps_per_epoch == 3 + 2  # K=4: 3 full batches, K=3: 2 (one left over), K=5: none
    batches = [plan.step_indices(s) for s in range(plan.total_steps)]
    assert all(len({groups[i] for i in batch}) == 1 and len(batch) == 2 for batch in batches)
    assert len({i for batch in batches for i in batch}) == 10  # no example twice in an epoch
    assert batches == [plan.step_indices(s) for s in range(plan.total_steps)]  # a pure function of (seed, step)


def test_held_out_batches_by_group():
    assert batches_by_group([3, 4, 3, 3, 4], 2) == [[0, 2], [3], [1, 4]]


@pytest.mark.slow
def test_listwise_rows_of_different_sizes_train_in_batches_of_one_size(tmp_path):
    import json

    from preftune.config import load_config
    from preftune.models import save_tiny_model
    from preftune.train.runner import run_training

    model = save_tiny_model(tmp_path / "tiny")
    rows = [{"prompt": f"{a}+1=", "responses": [str(a + 1 + d) for d in range(k)], "scores": list(range(k, 0, -1))}
            for a in range(12) for k in (3, 4)]  # 12 lists of K = 3 and 12 of K = 4, interleaved
    cfg = load_config(None, [f"--output_dir={tmp_path}/{{name}}", f"--model.name_or_path={model}", "--loss=adpo_listwise",
                             "--data.max_length=32", "--data.max_prompt_length=16", "--train.batch_size=4",
                             "--train.steps=6", "--train.progress=false", "--data.eval_fraction=0.25"])
    run_dir = run_training(cfg, data_source=rows)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sizes = [3 + ("rewards/response_3" in m) for m in logged if "loss" in m]
    assert len(sizes) == 6 and set(sizes) == {3, 4}  # both sizes trained, each step one of them
    assert "eval/loss" in logged[-1]  # held-out lists of both sizes evaluated without mixing


def test_pairs_of_identical_texts_are_left_out_and_pair_index_counts_kept_pairs():
    # A noisy rater scored the same text twice (0.9 and 0.2): that pair would be chosen == rejected.
    row = {"prompt": "1+1=", "responses": ["2", "3", "2", "5"], "scores": [0.9, 0.5, 0.2, 0.1]}
    pairs = pairs_from_ranked_rows([row], "all_pairs")
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert len(pairs) == 5  # 6 pairs of 4 responses, less the ("2", "2") one
    assert [p["pair_index"] for p in pairs] == list(range(5))
    fixed = pairs_from_ranked_rows([row], "chosen_fixed")
    assert [(p["chosen"], p["rejected"]) for p in fixed] == [("2", "5"), ("2", "3")]
