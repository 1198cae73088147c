"""The analysis papers of the catalogue, as the tools that implement them (not as loss functions).

Seven catalogue rows (family `analysis`) are measurements, not objectives: a probe, indicators,
a sweep, a benchmark protocol, a task, a taxonomy. Registering them as methods would put fake
losses in the registry, so they live in this separate registry instead. `preftune methods`
lists them after the methods, and `preftune methods --json` gives each with `"kind": "tool"`
(methods carry `"kind": "method"`), its catalogue `seed`, and the command that implements it,
so that coverage tools see which analysis rows the project implements, and how.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnalysisTool:
    name: str
    seed: str
    command: str                         # what a user runs
    implemented_by: tuple[str, ...]      # modules holding the implementation
    summary: str
    paper: str
    checks: tuple[str, ...] = ()         # tests (file::name) that check it on cases whose answer is known

    @property
    def status(self) -> str:
        """`stable` once tests check the tool against known values (tests/test_analysis_tools.py
        makes sure every named test exists), as a method is once its value, reduction and verify
        checks pass."""
        return "stable" if self.checks else "experimental"

    def as_dict(self) -> dict:
        return {"kind": "tool", "name": self.name, "seed": self.seed, "family": "analysis", "status": self.status,
                "command": self.command, "implemented_by": list(self.implemented_by), "summary": self.summary,
                "paper": self.paper, "checks": list(self.checks)}


TOOLS = (
    AnalysisTool(
        "separability-probe", "more-is-less", "preftune probe --model M --data SOURCE",
        ("preftune/eval/probe.py",),
        "linear probe of chosen vs rejected hidden states; held-out accuracy and AUC per layer, pair-grouped CV",
        "Wang et al. 2025, More is Less (arXiv 2504.02193), offline.md §17",
        checks=("tests/test_probe.py::test_gaussian_mean_shift_is_separated_almost_perfectly",
                "tests/test_probe.py::test_identical_distributions_give_chance_accuracy",
                "tests/test_probe.py::test_probe_command_on_a_tiny_model_separates_an_obvious_cue")),
    AnalysisTool(
        "taxonomy-tags", "dpo-survey", "preftune methods [--json]; taxonomy columns of preftune bench",
        ("preftune/methods/registry.py", "preftune/bench/tables.py"),
        "every registered method carries the survey's four taxonomy axes; the bench table shows them as columns",
        "Liu et al. 2025, A Survey of DPO (arXiv 2503.11701), offline.md §18",
        checks=("tests/test_registry.py::test_taxonomy_has_the_four_axes",
                "tests/test_bench.py::test_smoke_table_has_every_method_task_and_start_with_taxonomy_columns")),
    AnalysisTool(
        "bench", "insights-alignment", "preftune bench --config configs/bench/full.yaml",
        ("preftune/bench/",),
        "methods x built-in tasks x seeds, with and without an SFT stage: gold reward, win-rate vs SFT, KL, length, "
        "wall time as mean ± std (Markdown and JSON)",
        "Saeidi et al. 2025, Insights into Alignment (arXiv 2404.14723), offline.md §18",
        checks=("tests/test_bench.py::test_every_number_is_mean_and_std_over_three_seeds_of_the_cells",
                "tests/test_bench.py::test_sft_models_and_pairs_are_made_once_per_seed_and_shared",
                "tests/test_bench.py::test_the_smoke_benchs_base_model_is_pretrained_and_is_what_sft_and_base_cells_start_from")),
    AnalysisTool(
        "safety-task", "egida-safety", "data.source: task:safety; preftune eval --task safety",
        ("preftune/tasks/safety.py",),
        "harmful categories x attack styles to refuse, benign requests to answer; attack success rate and "
        "over-refusal, on held-out categories and styles",
        "Garcia-Gasulla et al. 2025, Egida (arXiv 2502.13603), offline.md §18",
        checks=("tests/test_tasks_builtin.py::test_safety_task_refuses_harmful_answers_benign_and_holds_out_names_and_styles",
                "tests/test_tasks_builtin.py::test_safety_metrics_count_attack_success_and_over_refusal")),
    AnalysisTool(
        "likelihood-trajectories", "3d-properties", "preftune train ... --diagnostics.every=N; preftune report RUN_DIR",
        ("preftune/eval/diagnostics.py", "preftune/report/measure_plots.py"),
        "chosen and rejected log-likelihood trajectories on held-out pairs during training, plotted",
        "Yan et al. 2025, 3D-Properties (arXiv 2406.07327), offline.md §11",
        checks=("tests/test_diagnostics.py::test_teacher_forced_statistics_match_a_hand_computation_on_a_bigram_model",
                "tests/test_diagnostics.py::test_training_loop_logs_diagnostics_at_step_zero_every_n_steps_and_at_the_end",
                "tests/test_diagnostics.py::test_warnings_name_the_turn_the_leak_the_collapse_and_the_gold_peak")),
    AnalysisTool(
        "overoptimisation-indicators", "likelihood-overopt", "preftune train ... --diagnostics.every=N",
        ("preftune/eval/diagnostics.py",),
        "top-k entropy (bits, renormalised) and top-k probability mass, k = 10, logged with KL and gold reward",
        "Shi et al. 2024, Understanding Likelihood Over-optimisation (arXiv 2410.11677), offline.md §12",
        checks=("tests/test_diagnostics.py::test_uniform_logits_give_log2_k_entropy_and_k_over_v_mass",
                "tests/test_diagnostics.py::test_one_hot_distribution_gives_zero_entropy_and_full_mass",
                "tests/test_diagnostics.py::test_hand_computed_four_token_distribution_with_k_2")),
    AnalysisTool(
        "kl-sweep", "daa-overopt-scaling", "preftune sweep --task T --values 0.03,0.1,0.3,1",
        ("preftune/eval/sweep.py", "preftune/bench/sweep.py"),
        "gold reward vs sqrt(KL) over a beta/steps sweep, fitted R(d) = d(alpha - beta log d) with its peak",
        "Rafailov et al. 2024, Scaling Laws for Over-optimisation in DAAs (arXiv 2406.02900), offline.md §13",
        checks=("tests/test_sweep.py::test_fit_recovers_known_parameters_from_noisy_points",
                "tests/test_sweep.py::test_analytic_peak_is_the_numeric_argmax_of_the_fitted_curve",
                "tests/test_bench.py::test_sweep_on_the_benchs_shared_assets_fits_and_plots")),
)


def all_tools() -> list[AnalysisTool]:
    return sorted(TOOLS, key=lambda t: t.name)
