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
    status: str = "experimental"

    def as_dict(self) -> dict:
        return {"kind": "tool", "name": self.name, "seed": self.seed, "family": "analysis", "status": self.status,
                "command": self.command, "implemented_by": list(self.implemented_by), "summary": self.summary,
                "paper": self.paper}


TOOLS = (
    AnalysisTool(
        "separability-probe", "more-is-less", "preftune probe --model M --data SOURCE",
        ("preftune/eval/probe.py",),
        "linear probe of chosen vs rejected hidden states; held-out accuracy and AUC per layer, pair-grouped CV",
        "Wang et al. 2025, More is Less (arXiv 2504.02193), offline.md §17"),
    AnalysisTool(
        "taxonomy-tags", "dpo-survey", "preftune methods [--json]; taxonomy columns of preftune bench",
        ("preftune/methods/registry.py", "preftune/bench.py"),
        "every registered method carries the survey's four taxonomy axes; the bench table shows them as columns",
        "Liu et al. 2025, A Survey of DPO (arXiv 2503.11701), offline.md §18"),
    AnalysisTool(
        "bench", "insights-alignment", "preftune bench --config configs/bench/full.yaml",
        ("preftune/bench.py",),
        "methods x built-in tasks x seeds, with and without an SFT stage: gold reward, win-rate vs SFT, KL, length, "
        "wall time as mean ± std (Markdown and JSON)",
        "Saeidi et al. 2025, Insights into Alignment (arXiv 2404.14723), offline.md §18"),
    AnalysisTool(
        "safety-task", "egida-safety", "data.source: task:safety; preftune eval --task safety",
        ("preftune/tasks/safety.py",),
        "harmful categories x attack styles to refuse, benign requests to answer; attack success rate and "
        "over-refusal, on held-out categories and styles",
        "Garcia-Gasulla et al. 2025, Egida (arXiv 2502.13603), offline.md §18"),
    AnalysisTool(
        "likelihood-trajectories", "3d-properties", "preftune train ... --diagnostics.every=N; preftune report RUN_DIR",
        ("preftune/eval/diagnostics.py", "preftune/report/measure_plots.py"),
        "chosen and rejected log-likelihood trajectories on held-out pairs during training, plotted",
        "Yan et al. 2025, 3D-Properties (arXiv 2406.07327), offline.md §11"),
    AnalysisTool(
        "overoptimisation-indicators", "likelihood-overopt", "preftune train ... --diagnostics.every=N",
        ("preftune/eval/diagnostics.py",),
        "top-k entropy (bits, renormalised) and top-k probability mass, k = 10, logged with KL and gold reward",
        "Shi et al. 2024, Understanding Likelihood Over-optimisation (arXiv 2410.11677), offline.md §12"),
    AnalysisTool(
        "kl-sweep", "daa-overopt-scaling", "preftune sweep --task T --values 0.03,0.1,0.3,1",
        ("preftune/eval/sweep.py",),
        "gold reward vs sqrt(KL) over a beta/steps sweep, fitted R(d) = d(alpha - beta log d) with its peak",
        "Rafailov et al. 2024, Scaling Laws for Over-optimisation in DAAs (arXiv 2406.02900), offline.md §13"),
)


def all_tools() -> list[AnalysisTool]:
    return sorted(TOOLS, key=lambda t: t.name)
