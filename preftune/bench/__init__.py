"""`preftune bench`: every offline method on every built-in task, over seeds, with and without SFT.

The protocol follows "Insights into Alignment" (Saeidi et al. 2025, offline.md §18): the same
preference data, and the alignment stage started either from an SFT model or directly from the
base model. For each (task, seed) the work shared by all methods is done once:

1. the base model of the seed, shared by every task: the built-in tiny model initialised with
   the seed and, with `pretrain.steps` > 0, trained by next-token prediction on an even mix of
   every bench task's demonstrations at high noise. It stands in for a pretrained model, which
   the protocol starts from: it knows each task's format, is right only some of the time, and
   is tuned to no task. (A randomly initialised model, `pretrain.steps: 0`, learns nothing
   from a few dozen preference steps, so its column would only say so.);
2. SFT of the base model on the task's demonstrations (with the task's demonstration noise);
3. the preference data: `samples_per_prompt` samples of the SFT model per train prompt,
   labelled by the task's labeller (pairs best against worst, or scored lists for listwise
   methods), so every method and both starting points see the same data;
4. the SFT model's samples on the test prompts, the baseline of every win-rate.

Each method recipe of configs/methods/ then trains from each starting point (its loss and
hyperparameters are the recipe's; steps, batch size and sequence lengths are the bench's) and
is evaluated by the task's gold reward: mean gold reward of samples at temperature 1, the
win-rate against the SFT model's samples, the Monte-Carlo KL to its starting model, the mean
response length, the task's own metrics, and the wall time of training. Cells run in parallel
worker processes; each writes its result as JSON, so an interrupted bench resumes where it stopped.

The package, by job: config.py (settings and rows), assets.py (steps 1-4), cells.py (one method
from one start on one task and seed), run.py (the worker pool and the whole run), tables.py (mean ±
std, Markdown, the README section), sweep.py (`preftune sweep` on the same assets).
"""
from preftune.bench.assets import (assets_dir, base_model_dir, digest, initial_model_dir, make_base_model,
                                   preference_rows, prepare_assets, pretrain_rows, sft_key, sft_model_dir, train_sft)
from preftune.bench.cells import (GUIDANCE_METHOD, GUIDED_BY_DPO, aux_model, cell_id, cell_path, cell_run_config,
                                  cell_run_dir, guidance_model, needs_dpo_guidance, rows_pairing, run_cell,
                                  starting_model)
from preftune.bench.config import (STARTS, BenchConfig, BenchEvalSettings, Entry, PairSettings, PreferenceSettings,
                                   PretrainSettings, SftSettings, TaskSettings, bench_entries, load_bench_config)
from preftune.bench.run import _run_jobs, previous_invocations, run_bench, sft_cost
from preftune.bench.tables import (HEADLINE, README_END, README_INTRO, README_START, aggregate, format_markdown,
                                   mean_std, method_taxonomy, write_readme)

__all__ = [
    "_run_jobs", "GUIDANCE_METHOD", "GUIDED_BY_DPO", "HEADLINE", "README_END", "README_INTRO", "README_START", "STARTS",
    "BenchConfig", "BenchEvalSettings", "Entry", "PairSettings", "PreferenceSettings", "PretrainSettings",
    "SftSettings", "TaskSettings", "aggregate", "assets_dir", "aux_model", "base_model_dir", "bench_entries",
    "cell_id", "cell_path", "cell_run_config", "cell_run_dir", "digest", "format_markdown", "guidance_model",
    "initial_model_dir", "load_bench_config", "make_base_model", "mean_std", "method_taxonomy", "needs_dpo_guidance",
    "preference_rows", "prepare_assets", "pretrain_rows", "previous_invocations", "rows_pairing", "run_bench",
    "run_cell", "sft_cost", "sft_key", "sft_model_dir", "starting_model", "train_sft", "write_readme",
]
