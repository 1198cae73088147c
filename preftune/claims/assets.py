"""What every arm of a (task, seed) shares: the bench's base model, SFT model and on-policy samples,
plus the splits and the SFT model's own scores on them.

The base and SFT models and the SFT model's samples are made by `preftune bench`'s machinery under
the claims run directory (its BenchConfig is built from the claims config), so they are made once
and an interrupted run resumes. The splits:

- preference data: the first `pairs.prompts` train prompts (the bench's choice);
- validation: the last `splits.validation_prompts` train prompts, never in the preference data;
- test: the task's test split, which neither SFT nor any preference stage ever sees.
"""
from __future__ import annotations

import json
from pathlib import Path

from preftune.claims.config import SPLIT_KEYS, ClaimsConfig
from preftune.config import ConfigError, from_dict, to_dict

SPLITS = ("validation", "test")


def bench_config(cfg: ClaimsConfig, task: str | None = None):
    """The bench configuration whose assets the claims share (same run directory). Every offline task
    is in it, so that the base model of a seed is the same for all; a task's own `pair_prompts`
    (for tasks with fewer train prompts than `pairs.prompts`) sets the preference prompts of its samples."""
    from preftune.bench import BenchConfig

    tasks = {t: {k: v for k, v in (cfg.tasks[t] or {}).items() if k not in SPLIT_KEYS} for t in offline_tasks(cfg)}
    pairs = dict(cfg.pairs)
    if task is not None and "pair_prompts" in (cfg.tasks[task] or {}):
        pairs["prompts"] = cfg.tasks[task]["pair_prompts"]
    data = {"name": cfg.name, "output_dir": cfg.output_dir, "seeds": cfg.all_seeds, "workers": cfg.workers,
            "threads_per_worker": cfg.threads_per_worker, "tasks": tasks,
            "pretrain": cfg.pretrain, "sft": cfg.sft, "pairs": pairs,
            # The bench's own test-set baseline is not used here (baselines() scores both splits), so keep it small.
            "eval": {"prompts": 8, "samples_per_prompt": 1, "batch_size": cfg.splits.batch_size}}
    return from_dict(BenchConfig, data)


def pair_prompt_count(cfg: ClaimsConfig, task: str) -> int | None:
    return (cfg.tasks[task] or {}).get("pair_prompts", cfg.pairs.get("prompts"))


def offline_tasks(cfg: ClaimsConfig) -> list[str]:
    return [t for t in cfg.tasks if t != "intransitive"]


def task_of(cfg: ClaimsConfig, name: str):
    from preftune.tasks import get_task

    return get_task(name, **(cfg.tasks[name].get("options") or {}))


def task_setting(cfg: ClaimsConfig, name: str, key: str, default=None):
    return (cfg.tasks.get(name) or {}).get(key, default)


def split_prompts(cfg: ClaimsConfig, name: str, split: str) -> list[str]:
    """The prompts of `split` for task `name` (see the module docstring); checks that validation never
    overlaps the preference prompts."""
    task = task_of(cfg, name)
    if split == "test":
        return task.prompts("test", (cfg.tasks[name] or {}).get("test_prompts", cfg.splits.test_prompts))
    if split != "validation":
        raise ValueError(f"claims: split must be one of {SPLITS}, got {split!r}")
    train = task.prompts("train")
    pair_prompts = pair_prompt_count(cfg, name)
    validation = train[-(cfg.tasks[name] or {}).get("validation_prompts", cfg.splits.validation_prompts):]
    used = len(train) if pair_prompts is None else min(pair_prompts, len(train))
    if used + len(validation) > len(train):
        raise ConfigError(f"claims: task {name} has {len(train)} train prompts; {used} preference prompts and "
                          f"{len(validation)} validation prompts would overlap (lower pairs.prompts or "
                          f"splits.validation_prompts)")
    return validation


def make_assets(cfg: ClaimsConfig, tasks: list[str], seeds: list[int], progress: bool, log=print) -> None:
    """Base models, SFT models and samples of every (task, seed), in the bench's worker pool and order:
    base models, then SFT models (longest first), then samples (tasks sharing an SFT model and prompts
    share them)."""
    from preftune.bench import _run_jobs, sft_cost, sft_key
    from preftune.bench.run import _base_job, _sft_job

    if not tasks:
        return
    bench = bench_config(cfg)
    bench.seeds = list(seeds)
    sft_jobs, sample_groups = {}, {}
    for seed in seeds:
        for task in tasks:
            key = sft_key(bench, task, seed)
            sft_jobs.setdefault(key, (task, seed))
            prompts = task_of(cfg, task).prompts("train", pair_prompt_count(cfg, task))
            group = (key, json.dumps([prompts, task_setting(cfg, task, "max_new_tokens")]), seed)
            sample_groups.setdefault(group, []).append(task)
    log(f"assets: {len(seeds)} base models, {len(sft_jobs)} SFT models, {len(sample_groups)} sample sets")
    _run_jobs(bench, _base_job, [(s,) for s in seeds], "base models", progress, lambda job: f"seed {job[0]}")
    _run_jobs(bench, _sft_job, sorted(sft_jobs.values(), key=lambda job: -sft_cost(bench, job[0])), "sft", progress,
              lambda job: f"{job[0]} seed {job[1]}")
    claims = to_dict(cfg)
    _run_jobs(bench, samples_job, [(claims, tuple(t), key[2]) for key, t in sample_groups.items()], "samples",
              progress, lambda job: f"{'+'.join(job[1])} seed {job[2]}")


def samples_job(_bench_dict: dict, cfg_dict: dict, tasks: tuple[str, ...], seed: int) -> list[dict]:
    """The assets of tasks sharing an SFT model and prompts, one after the other (the first samples,
    the others reuse its samples), each with its own preference prompts."""
    from preftune.bench import prepare_assets

    cfg = from_dict(ClaimsConfig, cfg_dict)
    return [prepare_assets(bench_config(cfg, task), task, seed) for task in tasks]


def assets_of(cfg: ClaimsConfig, task: str, seed: int) -> dict:
    from preftune.bench import assets_dir

    path = assets_dir(bench_config(cfg, task), task, seed) / "assets.json"
    if not path.exists():
        raise FileNotFoundError(f"claims: assets of {task} seed {seed} are missing ({path}); run make_assets first")
    return json.loads(path.read_text())


def start_model(assets: dict, start: str) -> str:
    return assets["sft_model"] if start == "sft" else assets["base_model"]


def preference_rows(cfg: ClaimsConfig, task: str, seed: int, pairing: str) -> list[dict]:
    """The (task, seed)'s rows cut from the SFT model's samples, labelled by the task's labeller."""
    from preftune.bench import preference_rows as bench_rows

    rows, _ = bench_rows(bench_config(cfg, task), assets_of(cfg, task, seed), pairing)
    return rows


def baselines_path(cfg: ClaimsConfig, task: str, seed: int) -> Path:
    return cfg.run_dir / "baselines" / task / f"seed{seed}.json"


def eval_options(cfg: ClaimsConfig, task: str, seed: int, split: str) -> dict:
    samples = cfg.splits.validation_samples_per_prompt if split == "validation" else cfg.splits.samples_per_prompt
    return dict(samples_per_prompt=samples, max_new_tokens=task_setting(cfg, task, "max_new_tokens", 8),
                seed=cfg.splits.eval_seed + seed, batch_size=cfg.splits.batch_size)


def baselines_job(cfg_dict: dict, task: str, seed: int) -> dict:
    """The SFT and base models of a (task, seed) scored on both splits, and the gold scores of the SFT
    model's samples there (every arm's win-rate is against them); cached as JSON."""
    from preftune.eval.task_eval import baseline_samples_scores, evaluate_on_task
    from preftune.models import load_causal_lm, load_tokenizer

    cfg = from_dict(ClaimsConfig, cfg_dict)
    path = baselines_path(cfg, task, seed)
    if path.exists():
        return json.loads(path.read_text())
    assets = assets_of(cfg, task, seed)
    tokenizer = load_tokenizer(assets["sft_model"])
    sft, base = load_causal_lm(assets["sft_model"]), load_causal_lm(assets["base_model"])
    the_task = task_of(cfg, task)
    out = {"task": task, "seed": seed, "sft_model": assets["sft_model"], "base_model": assets["base_model"]}
    for split in SPLITS:
        prompts, options = split_prompts(cfg, task, split), eval_options(cfg, task, seed, split)
        scores = baseline_samples_scores(sft, tokenizer, the_task, prompts, **options)
        out[split] = {"baseline_scores": scores.tolist(),
                      "sft": evaluate_on_task(sft, tokenizer, the_task, prompts, reference=base,
                                              baseline_scores=scores, progress=False, **options),
                      "base": evaluate_on_task(base, tokenizer, the_task, prompts, reference=base,
                                               baseline_scores=scores, progress=False, **options)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out
