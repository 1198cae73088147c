"""Running the whole bench: shared assets first, then every cell, in worker processes; then the table.

Every job writes its result to disk before returning, so an interrupted bench resumes where it
stopped, and the wall time of every invocation is kept.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from preftune.bench.assets import digest, make_base_model, prepare_assets, sft_key, train_sft
from preftune.bench.cells import cell_id, needs_dpo_guidance, run_cell
from preftune.bench.config import BenchConfig, bench_entries
from preftune.bench.tables import aggregate, format_markdown
from preftune.config import from_dict, to_dict


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _base_job(cfg_dict: dict, seed: int) -> dict:
    return make_base_model(from_dict(BenchConfig, cfg_dict), seed)


def sft_cost(cfg: BenchConfig, task: str) -> int:
    """A task's SFT cost in padded tokens, to start the longest jobs first."""
    settings = cfg.task_settings(task)
    return (settings.sft_steps or cfg.sft.steps) * settings.max_length


def _sft_job(cfg_dict: dict, task: str, seed: int) -> dict:
    return train_sft(from_dict(BenchConfig, cfg_dict), task, seed)


def _assets_job(cfg_dict: dict, tasks: tuple[str, ...], seed: int) -> list[dict]:
    """Assets of tasks that share samples, one after the other (the first samples, the rest reuse)."""
    cfg = from_dict(BenchConfig, cfg_dict)
    return [prepare_assets(cfg, task, seed) for task in tasks]


def _run_jobs(cfg: BenchConfig, fn, jobs: list[tuple], desc: str, progress: bool, describe) -> list:
    """Run fn(cfg_dict, *job) for every job, in cfg.workers processes (or inline for one worker)."""
    from tqdm.auto import tqdm

    cfg_dict = to_dict(cfg)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, dynamic_ncols=True)
    results = []
    if cfg.workers <= 1:
        for job in jobs:
            results.append(fn(cfg_dict, *job))
            bar.update(1)
            bar.set_postfix_str(describe(job))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from preftune.train.checkpoint import sigterm_as_interrupt

        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        with sigterm_as_interrupt(), ProcessPoolExecutor(cfg.workers, mp_context=context, initializer=_worker_init,
                                                         initargs=(cfg.threads_per_worker,)) as pool:
            futures = {pool.submit(fn, cfg_dict, *job): job for job in jobs}
            try:
                for future in as_completed(futures):
                    results.append(future.result())
                    bar.update(1)
                    bar.set_postfix_str(describe(futures[future]))
            except KeyboardInterrupt:
                # Ctrl-C or SIGTERM: stop the workers too (a killed parent would leave them running).
                # Finished cells are on disk, so the same command resumes where this one stopped.
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                bar.close()
                raise
    bar.close()
    return results


def previous_invocations(run_dir: Path) -> list[dict]:
    """Earlier invocations of a bench in run_dir (a run that wrote results.json before invocations
    were recorded counts as one)."""
    if (run_dir / "invocations.json").exists():
        return json.loads((run_dir / "invocations.json").read_text())
    if (run_dir / "results.json").exists():
        earlier = json.loads((run_dir / "results.json").read_text())
        return [{"command": earlier["command"], "wall_seconds": earlier["wall_seconds"]}]
    return []


def run_bench(cfg: BenchConfig, command: str, progress: bool = True, log=print) -> dict:
    """Run (or resume) the whole bench; writes results.json, results.md and plots to the run directory."""
    started = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    entries = bench_entries(cfg)
    # One SFT job per distinct SFT model, then one job per group of tasks sharing samples.
    from preftune.tasks import get_task

    sft_jobs, sample_groups = {}, {}
    for seed in cfg.seeds:
        for task in cfg.tasks:
            key = sft_key(cfg, task, seed)
            sft_jobs.setdefault(key, (task, seed))
            settings = cfg.task_settings(task)
            prompts = get_task(task, **settings.options).prompts("train", cfg.pairs.prompts)
            sample_groups.setdefault((key, digest(prompts, settings.max_new_tokens), seed), []).append(task)
    base_kind = f"pretrained for {cfg.pretrain.steps} steps" if cfg.pretrain.steps > 0 else "initialised"
    log(f"[1/3] {len(cfg.seeds)} base models ({base_kind}), {len(sft_jobs)} SFT models for {len(cfg.tasks)} tasks x "
        f"{len(cfg.seeds)} seeds (tasks with the same demonstrations share one), then preference samples and baselines")
    _run_jobs(cfg, _base_job, [(seed,) for seed in cfg.seeds], "base models", progress, lambda job: f"seed {job[0]}")
    # Longest first, so that no long SFT job starts last while the other worker idles.
    _run_jobs(cfg, _sft_job, sorted(sft_jobs.values(), key=lambda job: -sft_cost(cfg, job[0])), "sft", progress,
              lambda job: f"{job[0]} seed {job[1]}")
    groups = [(tuple(tasks), key[2]) for key, tasks in sample_groups.items()]
    assets = [a for group in _run_jobs(cfg, _assets_job, groups, "samples + baselines", progress,
                                       lambda job: f"{'+'.join(job[0])} seed {job[1]}") for a in group]
    cells = [{"task": task, "start": start, "method": entry.name, "seed": seed, "recipe": entry.recipe,
              "loss": entry.loss} for task in cfg.tasks for start in cfg.starts for entry in entries for seed in cfg.seeds]
    log(f"[2/3] {len(cells)} preference runs: {len(entries)} methods x {len(cfg.tasks)} tasks x "
        f"{len(cfg.starts)} starting points x {len(cfg.seeds)} seeds, {cfg.workers} workers")
    # Methods with an auxiliary (guidance) model run second: it is the dpo run of their cell.
    guided = {e.name for e in entries if needs_dpo_guidance(e.recipe)}
    waves = [[c for c in cells if c["method"] not in guided], [c for c in cells if c["method"] in guided]]
    results = [r for wave in waves if wave
               for r in _run_jobs(cfg, run_cell, [(c,) for c in wave], "methods", progress, lambda job: cell_id(job[0]))]
    log("[3/3] aggregating")
    # A resumed bench reuses finished cells, so its own wall time is not what the table cost:
    # every invocation's wall time is kept, and the table reports their sum.
    invocations = previous_invocations(run_dir) + [{"command": command,
                                                      "wall_seconds": round(time.perf_counter() - started, 1)}]
    (run_dir / "invocations.json").write_text(json.dumps(invocations, indent=1))
    report = aggregate(cfg, entries, assets, results, command, sum(i["wall_seconds"] for i in invocations))
    report["invocations"] = invocations
    (run_dir / "results.json").write_text(json.dumps(report, indent=1))
    (run_dir / "results.md").write_text(format_markdown(report))
    from preftune.report.measure_plots import plot_bench

    report["plots"] = [str(p) for p in plot_bench(report, run_dir / "plots")]
    (run_dir / "results.json").write_text(json.dumps(report, indent=1))
    return report
