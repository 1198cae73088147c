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
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from preftune.config import (ConfigError, RunConfig, from_dict, load_config, merge_recipe, read_recipe, to_dict,
                             with_overrides)

STARTS = ("sft", "base")


# --------------------------------------------------------------------------- configuration

@dataclass
class TaskSettings:
    """How one task runs in the bench: sequence lengths, demonstration noise, task and labeller options."""

    max_length: int = 32
    max_prompt_length: int = 16
    max_new_tokens: int = 8
    noise: float = 0.1                   # fraction of SFT demonstrations with a wrong answer
    sft_steps: int | None = None         # None: sft.steps (an easy task can take fewer)
    options: dict = field(default_factory=dict)
    labeller: dict = field(default_factory=dict)


@dataclass
class SftSettings:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    demonstrations: int = 19200
    warmup_ratio: float = 0.1


@dataclass
class PretrainSettings:
    """The base model of each seed (see the module docstring, step 1)."""

    steps: int = 0                       # 0: the tiny model as initialised (random weights)
    batch_size: int = 64
    lr: float = 1e-3
    demonstrations_per_task: int = 4096  # per distinct set of demonstrations (tasks sharing one count once)
    noise: float = 0.5                   # fraction of those demonstrations with a wrong answer
    warmup_ratio: float = 0.1


@dataclass
class PreferenceSettings:
    steps: int = 60
    batch_size: int = 16
    lr: float | None = None              # None: each recipe's own learning rate


@dataclass
class PairSettings:
    prompts: int | None = 768            # train prompts sampled (None: all)
    samples_per_prompt: int = 4
    temperature: float = 1.0


@dataclass
class BenchEvalSettings:
    prompts: int | None = 100            # held-out prompts (None: the whole test split)
    samples_per_prompt: int = 2
    seed: int = 1234
    batch_size: int = 128                # sequences generated at once, here and for the preference samples


@dataclass
class BenchConfig:
    name: str = "bench"
    output_dir: str = "runs/{name}"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: dict = field(default_factory=lambda: {"arithmetic": {}})   # task name -> TaskSettings fields
    methods: list[str] = field(default_factory=list)                  # recipe names; empty: every recipe
    recipes: str = "configs/methods"
    starts: list[str] = field(default_factory=lambda: list(STARTS))   # sft: SFT then preference; base: no SFT
    workers: int = 2
    threads_per_worker: int = 1
    keep_models: bool = False
    sft: SftSettings = field(default_factory=SftSettings)
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    pairs: PairSettings = field(default_factory=PairSettings)
    eval: BenchEvalSettings = field(default_factory=BenchEvalSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    def task_settings(self, task: str) -> TaskSettings:
        return from_dict(TaskSettings, self.tasks[task] or {}, f"tasks.{task}")


def load_bench_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BenchConfig:
    """Defaults, then the YAML file, then `--key=value` overrides (e.g. --seeds=[0] --workers=1)."""
    data = to_dict(BenchConfig())
    if path is not None:  # the recipe's task list replaces the default one
        merge_recipe(data, read_recipe(path, "a bench config"), replaced=("tasks",))
    cfg = with_overrides(BenchConfig, data, overrides)
    from preftune.tasks import task_names

    for task in cfg.tasks:
        if task not in task_names():
            raise ConfigError(f"bench: unknown task {task!r}; built-in tasks: {', '.join(task_names())}")
        cfg.task_settings(task)  # checks its keys
    unknown = sorted(set(cfg.starts) - set(STARTS))
    if unknown or not cfg.starts:
        raise ConfigError(f"bench: starts must be a non-empty subset of {list(STARTS)}, got {cfg.starts}")
    if len(cfg.seeds) < 1:
        raise ConfigError("bench: give at least one seed")
    return cfg


@dataclass
class Entry:
    """One row of the table: a method recipe, or a registered method on the template recipe."""

    name: str
    recipe: str
    loss: str | None = None              # set: the template recipe with this loss (default hyperparameters)


def bench_entries(cfg: BenchConfig) -> list[Entry]:
    """Every recipe of cfg.recipes, then every registered offline method that no recipe trains on
    its own, on the template recipe (`dpo.yaml`'s settings, the method's default hyperparameters);
    only those named in cfg.methods when it is set."""
    from preftune.methods import all_methods, build_objective

    folder = Path(cfg.recipes)
    recipes = sorted(folder.glob("*.yaml"))
    template = folder / "dpo.yaml"
    if not template.exists():
        raise ConfigError(f"bench: the template recipe {template} is missing")
    entries = [Entry(p.stem, str(p)) for p in recipes]
    covered = set()
    for p in recipes:
        terms = build_objective(load_config(p).loss).terms
        if len(terms) == 1:
            covered.add(terms[0].spec.name)
    entries += [Entry(spec.name, str(template), spec.name) for spec in all_methods()
                if spec.family.startswith("offline") and spec.name not in covered
                and spec.name not in {e.name for e in entries}]
    if cfg.methods:
        by_name = {e.name: e for e in entries}
        missing = [m for m in cfg.methods if m not in by_name]
        if missing:
            raise ConfigError(f"bench: no recipe or offline method {missing[0]!r}; available: {', '.join(by_name)}")
        entries = [by_name[m] for m in cfg.methods]
    return entries


# --------------------------------------------------------------------------- shared assets per (task, seed)
#
# Tasks that share demonstrations share an SFT model (arithmetic, noisy-labels and mixed-margins
# differ only in labelling and scoring), and tasks that also share train prompts share the SFT
# model's samples: both are stored under a hash of what determines them.

def assets_dir(cfg: BenchConfig, task: str, seed: int) -> Path:
    return cfg.run_dir / "assets" / task / f"seed{seed}"


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def initial_model_dir(cfg: BenchConfig, seed: int) -> Path:
    return cfg.run_dir / "assets" / "base" / f"seed{seed}"


def pretrain_rows(cfg: BenchConfig, seed: int) -> list[dict]:
    """The base model's training text: `demonstrations_per_task` demonstrations of every distinct
    demonstration set among the bench's tasks, at the pretraining noise, shuffled together."""
    import random

    from preftune.tasks import get_task

    rows, seen = [], set()
    for task_name in cfg.tasks:
        settings = cfg.task_settings(task_name)
        demos = get_task(task_name, **settings.options).demonstrations(
            cfg.pretrain.demonstrations_per_task, cfg.pretrain.noise, seed)
        key = _digest(demos)
        if key not in seen:  # tasks that differ only in labelling and scoring have one demonstration set
            seen.add(key)
            rows += demos
    random.Random(seed).shuffle(rows)
    return rows


def base_model_dir(cfg: BenchConfig, seed: int) -> Path:
    """The seed's base model: the initialised tiny model, or that model pretrained (PretrainSettings)."""
    if cfg.pretrain.steps <= 0:
        return initial_model_dir(cfg, seed)
    return cfg.run_dir / "assets" / "base" / _pretrain_key(cfg, seed) / "pretrain" / "model"


_PRETRAIN_KEYS: dict[str, str] = {}


def _pretrain_key(cfg: BenchConfig, seed: int) -> str:
    """A digest of the base model's training rows and settings. Making the rows takes a quarter of
    a second and every stage asks for the key (each SFT key holds it), so it is kept per process
    for the settings that determine the rows."""
    settings = json.dumps([cfg.tasks, to_dict(cfg.pretrain), seed], sort_keys=True, default=str)
    if settings not in _PRETRAIN_KEYS:
        _PRETRAIN_KEYS[settings] = _digest(pretrain_rows(cfg, seed), to_dict(cfg.pretrain), _pretrain_lengths(cfg),
                                           seed)
    return _PRETRAIN_KEYS[settings]


def _pretrain_lengths(cfg: BenchConfig) -> tuple[int, int]:
    """Sequence lengths that fit every task's demonstrations."""
    settings = [cfg.task_settings(t) for t in cfg.tasks]
    return max(s.max_length for s in settings), max(s.max_prompt_length for s in settings)


def make_base_model(cfg: BenchConfig, seed: int, progress: bool = False) -> dict:
    """The seed's base model, unless already made (see base_model_dir)."""
    from preftune.config import DataConfig, TrainConfig
    from preftune.models import save_tiny_model
    from preftune.train.loop import train

    model_dir = base_model_dir(cfg, seed)
    record = model_dir.with_name(model_dir.name + ".json")
    if record.exists():
        return json.loads(record.read_text())
    started, cpu_started = time.perf_counter(), time.process_time()
    initial = initial_model_dir(cfg, seed)
    if not (initial / "config.json").exists():
        save_tiny_model(initial, seed=seed)
    if model_dir != initial:
        max_length, max_prompt_length = _pretrain_lengths(cfg)
        pretrain_cfg = RunConfig(
            name="pretrain", output_dir=str(model_dir.parent.parent / "{name}"), loss="sft", reference="none",
            data=DataConfig(source="in memory: demonstrations of every bench task", max_length=max_length,
                            max_prompt_length=max_prompt_length),
            train=TrainConfig(steps=cfg.pretrain.steps, batch_size=cfg.pretrain.batch_size, lr=cfg.pretrain.lr,
                              warmup_ratio=cfg.pretrain.warmup_ratio, schedule="cosine", seed=seed,
                              progress=progress, log_every=10))
        pretrain_cfg.model.name_or_path = str(initial)
        train(pretrain_cfg, data_source=pretrain_rows(cfg, seed))
    made = {"seed": seed, "model": str(model_dir), "pretrain_steps": max(0, cfg.pretrain.steps),
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu_started, 2)}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(made, indent=1))
    return made


def sft_key(cfg: BenchConfig, task_name: str, seed: int) -> str:
    """What determines the SFT model: the base model, the demonstrations, the SFT settings, the
    lengths, the seed."""
    from preftune.tasks import get_task

    settings = cfg.task_settings(task_name)
    rows = get_task(task_name, **settings.options).demonstrations(cfg.sft.demonstrations, settings.noise, seed)
    return _digest(rows, to_dict(cfg.sft), settings.sft_steps, settings.max_length, settings.max_prompt_length, seed,
                   str(base_model_dir(cfg, seed)))


def sft_model_dir(cfg: BenchConfig, task_name: str, seed: int) -> Path:
    return cfg.run_dir / "assets" / "sft" / sft_key(cfg, task_name, seed) / "sft" / "model"


def train_sft(cfg: BenchConfig, task_name: str, seed: int, progress: bool = False) -> dict:
    """SFT of the seed's base model on the task's demonstrations, unless already made."""
    from preftune.config import DataConfig, TaskDataConfig, TrainConfig
    from preftune.train.loop import train

    model_dir = sft_model_dir(cfg, task_name, seed)
    record = model_dir.parent.parent / "sft.json"
    if record.exists():
        return json.loads(record.read_text())
    started, cpu_started = time.perf_counter(), time.process_time()
    base = Path(make_base_model(cfg, seed)["model"])
    settings = cfg.task_settings(task_name)
    sft_cfg = RunConfig(
        name="sft", output_dir=str(model_dir.parent.parent / "{name}"), loss="sft", reference="none",
        data=DataConfig(source=f"task:{task_name}", max_length=settings.max_length,
                        max_prompt_length=settings.max_prompt_length,
                        task=TaskDataConfig(options=settings.options, demonstrations=cfg.sft.demonstrations,
                                            noise=settings.noise)),
        train=TrainConfig(steps=settings.sft_steps or cfg.sft.steps, batch_size=cfg.sft.batch_size, lr=cfg.sft.lr,
                          warmup_ratio=cfg.sft.warmup_ratio, schedule="cosine", seed=seed, progress=progress,
                          log_every=10))
    sft_cfg.model.name_or_path = str(base)
    train(sft_cfg)
    made = {"task": task_name, "seed": seed, "model": str(model_dir), "base_model": str(base),
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu_started, 2)}
    record.write_text(json.dumps(made, indent=1))
    return made


def prepare_assets(cfg: BenchConfig, task_name: str, seed: int, progress: bool = False) -> dict:
    """SFT model, preference samples and SFT baseline scores of one (task, seed); cached on disk."""
    from preftune.eval.task_eval import baseline_samples_scores, evaluate_on_task
    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.sampling import sample
    from preftune.tasks import get_task

    folder = assets_dir(cfg, task_name, seed)
    done = folder / "assets.json"
    if done.exists():
        return json.loads(done.read_text())
    sft = train_sft(cfg, task_name, seed, progress)
    cpu_started = time.process_time()
    settings = cfg.task_settings(task_name)
    task = get_task(task_name, **settings.options)
    tokenizer, sft_lm = load_tokenizer(sft["model"]), load_causal_lm(sft["model"])
    prompts = task.prompts("train", cfg.pairs.prompts)
    samples_path = cfg.run_dir / "assets" / "samples" / (
        _digest(sft["model"], prompts, to_dict(cfg.pairs), settings.max_new_tokens, seed) + ".json")
    if not samples_path.exists():
        samples = sample(sft_lm, tokenizer, prompts, cfg.pairs.samples_per_prompt, cfg.pairs.temperature, 1.0,
                         settings.max_new_tokens, cfg.eval.batch_size, seed, progress, desc=f"pairs {task_name}")
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = samples_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"prompts": samples.prompts, "texts": samples.texts}))
        temporary.replace(samples_path)  # atomic: a task sharing these samples never reads half a file
    stored = json.loads(samples_path.read_text())
    texts = [t for row in stored["texts"] for t in row]
    sample_gold = sum(task.score(p, t) for p, row in zip(stored["prompts"], stored["texts"]) for t in row)
    folder.mkdir(parents=True, exist_ok=True)
    test_prompts = task.prompts("test", cfg.eval.prompts)
    eval_options = dict(samples_per_prompt=cfg.eval.samples_per_prompt, max_new_tokens=settings.max_new_tokens,
                        seed=cfg.eval.seed + seed, batch_size=cfg.eval.batch_size)
    baseline = baseline_samples_scores(sft_lm, tokenizer, task, test_prompts, **eval_options)
    (folder / "baseline_scores.json").write_text(json.dumps(baseline.tolist()))
    base_lm = load_causal_lm(sft["base_model"])
    evaluations = {
        "sft": evaluate_on_task(sft_lm, tokenizer, task, test_prompts, reference=base_lm, baseline_scores=baseline,
                                progress=False, **eval_options),
        "base": evaluate_on_task(base_lm, tokenizer, task, test_prompts, reference=base_lm, baseline_scores=baseline,
                                 progress=False, **eval_options)}
    assets = {"task": task_name, "seed": seed, "base_model": sft["base_model"], "sft_model": sft["model"],
              "sft_seconds": sft["seconds"], "sft_shared_with": sft["task"] if sft["task"] != task_name else None,
              "cpu_seconds": round(time.process_time() - cpu_started, 2)
              + (sft["cpu_seconds"] if sft["task"] == task_name else 0.0),
              "samples": str(samples_path), "baseline_scores": str(folder / "baseline_scores.json"),
              "evaluations": evaluations, "sample_gold_reward": sample_gold / max(1, len(texts))}
    done.write_text(json.dumps(assets, indent=1))
    return assets


def preference_rows(cfg: BenchConfig, assets: dict, pairing: str) -> tuple[list[dict], dict]:
    """The (task, seed)'s preference rows for a pairing, cut from its stored samples."""
    from types import SimpleNamespace

    from preftune.config import TaskDataConfig
    from preftune.tasks import get_task
    from preftune.tasks.data import label_stats, pairs_from_samples, task_labeller

    settings = cfg.task_settings(assets["task"])
    task = get_task(assets["task"], **settings.options)
    stored = json.loads(Path(assets["samples"]).read_text())
    labeller = task_labeller(task, TaskDataConfig(labeller=settings.labeller))
    rows = pairs_from_samples(task, SimpleNamespace(**stored), pairing, labeller, assets["seed"])
    return rows, {"rows": len(rows), "pairing": pairing, **label_stats(rows, labeller)}


# --------------------------------------------------------------------------- one cell: method x task x start x seed

def cell_id(cell: dict) -> str:
    return f"{cell['task']}/{cell['start']}/{cell['method']}/seed{cell['seed']}"


def cell_path(cfg: BenchConfig, cell: dict) -> Path:
    return cfg.run_dir / "cells" / f"{cell_id(cell)}.json"


def cell_run_config(cfg: BenchConfig, cell: dict, assets: dict):
    """The recipe's RunConfig with the bench's model, data, lengths, budget and seed."""
    recipe = load_config(cell["recipe"], [f"--loss={cell['loss']}"] if cell.get("loss") else None)
    settings = cfg.task_settings(cell["task"])
    start_model = starting_model(cell, assets)
    data = to_dict(recipe)
    data["name"] = cell["method"]
    data["output_dir"] = str(cell_run_dir(cfg, {**cell, "method": "{name}"}))
    data["model"]["name_or_path"] = start_model
    data["aux_models"] = {name: aux_model(cfg, cell, name, assets) for name in data["aux_models"]}
    data["data"].update(source=f"task:{cell['task']}", max_length=settings.max_length,
                        max_prompt_length=settings.max_prompt_length, eval_source=None, eval_fraction=0.0, limit=None)
    data["data"]["task"].update(options=settings.options, labeller=settings.labeller)
    data["train"].update(steps=cfg.preference.steps, batch_size=cfg.preference.batch_size, grad_accum=1,
                         seed=cell["seed"], progress=False, log_every=5, checkpoint_every=0, eval_every=0)
    if cfg.preference.lr is not None:
        data["train"]["lr"] = cfg.preference.lr
    data["diagnostics"]["every"] = 0
    return from_dict(RunConfig, data)


# Auxiliary models by role. TGDPO's `guidance` is, as in its paper and configs/methods/tgdpo.yaml, a
# DPO-trained model: the bench's own `dpo` run of the same task, start and seed, so guided methods
# run after the others and the `dpo` runs keep their models. Any other auxiliary model (BRAIn's
# `proposal_logps`) is the model that sampled the responses: the SFT model, for both starts.
GUIDANCE_METHOD = "dpo"
GUIDED_BY_DPO = ("guidance",)


def starting_model(cell: dict, assets: dict) -> str:
    """The model a cell's preference training starts from: its (task, seed)'s SFT or base model."""
    return assets["sft_model"] if cell["start"] == "sft" else assets["base_model"]


def aux_model(cfg: BenchConfig, cell: dict, name: str, assets: dict) -> str:
    """The model behind auxiliary model `name` of a cell (see GUIDED_BY_DPO)."""
    if name in GUIDED_BY_DPO:
        return guidance_model(cfg, cell, starting_model(cell, assets))
    return str(assets["sft_model"])


def guidance_model(cfg: BenchConfig, cell: dict, start_model: str) -> str:
    """The model an auxiliary-model method reads: the same (task, start, seed)'s dpo run, or, when
    the bench runs no dpo, the starting model (which makes TGDPO train as DPO; the table says so)."""
    dpo_cell = {**cell, "method": GUIDANCE_METHOD}
    model = cell_run_dir(cfg, dpo_cell) / "model"
    return str(model) if (model / "config.json").exists() else start_model


def cell_run_dir(cfg: BenchConfig, cell: dict) -> Path:
    return cfg.run_dir / "runs" / cell["task"] / cell["start"] / f"seed{cell['seed']}" / cell["method"]


def needs_dpo_guidance(recipe: str) -> bool:
    return any(name in GUIDED_BY_DPO for name in load_config(recipe).aux_models)


def rows_pairing(run_cfg) -> str:
    """Which rows a recipe trains on: scored lists for listwise objectives and for curricula (which
    cut ranked lists into pairs themselves), else its pairing."""
    from preftune.methods import build_objective

    if (build_objective(run_cfg.loss).input_kind == "listwise" or run_cfg.data.kind == "listwise"
            or run_cfg.curriculum.pairs):
        return "listwise"
    return run_cfg.data.task.pairing


def run_cell(cfg_dict: dict, cell: dict) -> dict:
    """Train one method from one starting point on one (task, seed) and evaluate it; cached as JSON."""
    import shutil

    import torch

    from preftune.eval.task_eval import evaluate_on_task
    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.tasks import get_task
    from preftune.train.loop import train

    cfg = from_dict(BenchConfig, cfg_dict)
    path = cell_path(cfg, cell)
    if path.exists():
        return json.loads(path.read_text())
    result = {k: cell[k] for k in ("task", "start", "method", "seed", "recipe", "loss")}
    try:
        assets = json.loads((assets_dir(cfg, cell["task"], cell["seed"]) / "assets.json").read_text())
        run_cfg = cell_run_config(cfg, cell, assets)
        rows, data_stats = preference_rows(cfg, assets, rows_pairing(run_cfg))
        started, cpu_started = time.perf_counter(), time.process_time()
        run_dir = train(run_cfg, data_source=rows)
        train_seconds = time.perf_counter() - started
        summary = json.loads((run_dir / "train_summary.json").read_text())
        settings = cfg.task_settings(cell["task"])
        task = get_task(cell["task"], **settings.options)
        start_model = run_cfg.model.name_or_path
        tokenizer = load_tokenizer(start_model)
        policy, start = load_causal_lm(str(run_dir / "model")), load_causal_lm(start_model)
        baseline = torch.tensor(json.loads(Path(assets["baseline_scores"]).read_text()), dtype=torch.float64)
        metrics = evaluate_on_task(policy, tokenizer, task, task.prompts("test", cfg.eval.prompts), reference=start,
                                   baseline_scores=baseline, samples_per_prompt=cfg.eval.samples_per_prompt,
                                   max_new_tokens=settings.max_new_tokens, seed=cfg.eval.seed + cell["seed"],
                                   batch_size=cfg.eval.batch_size, progress=False)
        result.update(status="ok", objective=summary["objective"], metrics=metrics, data=data_stats,
                      train_seconds=round(train_seconds, 2), cpu_seconds=round(time.process_time() - cpu_started, 2),
                      final_train_metrics={k: v for k, v in summary["final_train_metrics"].items()
                                           if k in ("loss", "accuracy", "margin")})
        result["aux_models"] = {k: str(v) for k, v in run_cfg.aux_models.items()}
        if not cfg.keep_models and cell["method"] != GUIDANCE_METHOD:
            shutil.rmtree(run_dir / "model", ignore_errors=True)
    except Exception as error:  # a method that cannot run here is a row of the table, not a crash
        result.update(status="error", error=f"{type(error).__name__}: {error}",
                      traceback=traceback.format_exc(limit=4))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------- running everything

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
            sample_groups.setdefault((key, _digest(prompts, settings.max_new_tokens), seed), []).append(task)
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


# --------------------------------------------------------------------------- the table

HEADLINE = [("gold_reward", "gold reward", "{:.3f}"), ("win_rate", "win-rate vs SFT", "{:.3f}"),
            ("kl", "KL", "{:.2f}"), ("length", "length", "{:.2f}")]


def mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def method_taxonomy(entry: Entry) -> dict[str, list[str]]:
    """The survey-taxonomy tags (A Survey of DPO, offline.md §18) of an entry's objective, merged over its terms."""
    from preftune.methods import build_objective

    tags: dict[str, list[str]] = {}
    for term in build_objective(entry.loss or load_config(entry.recipe).loss).terms:
        for axis, values in term.spec.taxonomy.items():
            tags.setdefault(axis, [])
            tags[axis] += [v for v in values if v not in tags[axis]]
    return tags


def aggregate(cfg: BenchConfig, entries: list[Entry], assets: list[dict], results: list[dict], command: str,
              wall_seconds: float) -> dict:
    """Mean ± std over seeds of every metric, per (task, start, method), plus the SFT and base models."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["start"], r["method"]), []).append(r)
    for a in assets:  # the starting models themselves, evaluated on the same prompts
        for start in ("sft", "base"):
            groups.setdefault((a["task"], start, f"({start} model)"), []).append(
                {"status": "ok", "metrics": a["evaluations"][start], "seed": a["seed"],
                 "train_seconds": a["sft_seconds"] if start == "sft" else 0.0})
    shared = sorted({f"{a['task']} uses {a['sft_shared_with']}'s" for a in assets if a.get("sft_shared_with")})
    rows = []
    for (task, start, method), members in sorted(groups.items()):
        ok = [m for m in members if m["status"] == "ok"]
        keys = sorted({k for m in ok for k, v in m["metrics"].items() if isinstance(v, float)})
        row = {"task": task, "start": start, "method": method, "seeds": len(members), "ok": len(ok),
               "metrics": {k: mean_std([m["metrics"].get(k) for m in ok]) for k in keys},
               "train_seconds": mean_std([m.get("train_seconds") for m in ok])}
        errors = sorted({m["error"] for m in members if m["status"] == "error"})
        if errors:
            row["errors"] = errors
        rows.append(row)
    taxonomy = {}
    for entry in entries:
        try:
            taxonomy[entry.name] = method_taxonomy(entry)
        except Exception as error:  # noqa: BLE001  (a broken recipe still gets its error row)
            taxonomy[entry.name] = {"error": [str(error)]}
    cpu = sum(a.get("cpu_seconds", 0.0) for a in assets) + sum(r.get("cpu_seconds", 0.0) for r in results)
    return {"command": command, "wall_seconds": round(wall_seconds, 1), "cpu_seconds": round(cpu, 1),
            "workers": cfg.workers,
            "threads_per_worker": cfg.threads_per_worker, "cpu_count": os.cpu_count(), "config": to_dict(cfg),
            "tasks": list(cfg.tasks), "starts": list(cfg.starts), "seeds": list(cfg.seeds),
            "methods": [e.name for e in entries], "taxonomy": taxonomy,
            "recipes": {e.name: (e.recipe if e.loss is None else f"{e.recipe} with loss {e.loss} (default "
                                 f"hyperparameters)") for e in entries},
            "assets": [{k: a[k] for k in ("task", "seed", "sft_seconds", "sample_gold_reward")} for a in assets],
            "curricula": [e.name for e in entries if e.loss is None and load_config(e.recipe).curriculum.pairs],
            "shared_sft": shared,
            "rows": rows, "cells": results}


def _cell(stat: dict | None, fmt: str = "{:.3f}") -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['std'])}"


def format_markdown(report: dict) -> str:
    """The results as Markdown: the exact command, a methods x tasks gold-reward table per
    starting point (with the survey's taxonomy as columns), then every metric per task."""
    rows = {(r["task"], r["start"], r["method"]): r for r in report["rows"]}
    seeds, tasks = report["seeds"], report["tasks"]
    lines = [f"Command: `{report['command']}`", "",
             f"{len(report['methods'])} methods x {len(tasks)} tasks x {len(report['starts'])} starting points x "
             f"{len(seeds)} seeds (seeds {', '.join(map(str, seeds))}); wall time {report['wall_seconds'] / 60:.1f} min "
             + (f"over {len(report['invocations'])} invocations (a resumed run reuses finished cells) "
                if len(report.get("invocations", [])) > 1 else "") +
             f"with {report['workers']} worker processes of {report['threads_per_worker']} thread(s) "
             f"on a machine with {report['cpu_count']} CPUs ({report.get('cpu_seconds', 0) / 60:.1f} CPU-minutes "
             f"in the workers; wall times also count any other load on the machine). "
             f"Every number is mean ± std over seeds.", ""]
    pretrain = report.get("config", {}).get("pretrain", {})
    if pretrain.get("steps", 0) > 0:
        lines += [f"Base model (one per seed, shared by every task): the tiny model trained by next-token prediction "
                  f"for {pretrain['steps']} steps of {pretrain['batch_size']} on an even mix of every task's "
                  f"demonstrations, {pretrain['noise']:.0%} of them with a wrong answer: a stand-in for a pretrained "
                  f"model, which knows each task's format and is tuned to none. The SFT models start from it.", ""]
    else:
        lines += ["Base model: the tiny model as initialised (random weights; `pretrain.steps: 0`).", ""]
    if report.get("shared_sft"):
        lines += [f"Tasks with the same demonstrations share one SFT model per seed ({', '.join(report['shared_sft'])}).",
                  ""]
    templated = [name for name, recipe in report.get("recipes", {}).items() if "default hyperparameters" in recipe]
    if templated:
        lines += [f"Methods without a recipe of their own run on the settings of configs/methods/dpo.yaml with "
                  f"their default hyperparameters: {', '.join(templated)}.", ""]
    guided = sorted({c["method"] for c in report.get("cells", []) if set(c.get("aux_models", {})) & set(GUIDED_BY_DPO)})
    if guided:
        lines += [f"Guidance models ({', '.join(guided)}): the `{GUIDANCE_METHOD}` run of the same task, start and "
                  f"seed, as in TGDPO's setup (where the bench runs no `{GUIDANCE_METHOD}`, the starting model, which "
                  f"makes TGDPO train as DPO).", ""]
    proposals = sorted({c["method"] for c in report.get("cells", [])
                        if set(c.get("aux_models", {})) - set(GUIDED_BY_DPO)})
    if proposals:
        lines += [f"Proposal models ({', '.join(proposals)}): the SFT model, which sampled the responses, for both "
                  f"starting points.", ""]
    curricula = report.get("curricula", [])
    if curricula:
        lines += [f"Curricula ({', '.join(curricula)}) train on the same scored lists as the listwise methods, cut into "
                  f"pairs, for the preference budget per stage (the stages refresh the reference).", ""]
    axes = ("data_strategy", "learning_framework", "constraint_mechanism", "model_property")
    titles = {"sft": "Gold reward, preference training after SFT",
              "base": "Gold reward, preference training from the base model (no SFT stage)"}
    for start in report["starts"]:
        lines += [f"### {titles[start]}", "",
                  "| method | " + " | ".join(a.replace("_", " ") for a in axes) + " | " + " | ".join(tasks) + " |",
                  "|---" * (1 + len(axes) + len(tasks)) + "|"]
        for method in [f"({start} model)"] + report["methods"]:
            tags = report["taxonomy"].get(method, {})
            tag_cells = [", ".join(tags.get(a, [])) or "–" for a in axes] if tags else ["–"] * len(axes)
            cells = []
            for task in tasks:
                row = rows.get((task, start, method))
                cells.append(_cell(row["metrics"].get("gold_reward")) if row and row["ok"] else
                             ("error" if row else "–"))
            lines.append(f"| {method} | " + " | ".join(tag_cells) + " | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Every metric, per task", "",
              "gold reward: mean gold score of samples at temperature 1; win-rate: against the SFT model's "
              "samples on the same prompts, judged by the gold oracle (ties count half); KL: Monte-Carlo "
              "KL to the run's starting model (the base model, for the SFT model's own row); length: tokens per "
              "response; train s: wall time of the preference stage (of SFT, for the SFT model's row). Task metrics "
              "per held-out subset are in results.json.", ""]
    for task in tasks:
        extra = sorted({k for (t, _, _), r in rows.items() if t == task for k in r["metrics"]}
                       - {k for k, _, _ in HEADLINE} - {"gold_reward_greedy", "prompts", "samples"})
        extra = [k for k in extra if "/" not in k or k.startswith("gold/")]  # per-subset numbers stay in the JSON
        lines += [f"#### {task}", "",
                  "| " + " | ".join(["method", "start", *(label for _, label, _ in HEADLINE), "train s",
                                      *(k.replace("_", " ") for k in extra)]) + " |",
                  "|---" * (3 + len(HEADLINE) + len(extra)) + "|"]
        for (t, start, method), r in sorted(rows.items(), key=lambda kv: (kv[0][1] != "sft", kv[0][1], kv[0][2])):
            if t != task:
                continue
            if not r["ok"]:
                lines.append(f"| {method} | {start} | error: {'; '.join(r.get('errors', []))[:120]} |")
                continue
            values = [_cell(r["metrics"].get(k), fmt) for k, _, fmt in HEADLINE]
            values.append(_cell(r["train_seconds"], "{:.1f}"))
            values += [_cell(r["metrics"].get(k)) for k in extra]
            lines.append(f"| {method} | {start} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


README_INTRO = """## preftune bench: every offline method on the built-in tasks

`preftune bench` trains every offline method recipe of `configs/methods/` on every built-in task,
for several seeds, both after an SFT stage and directly from the base model (the protocol of
"Insights into Alignment", Saeidi et al. 2025), and scores each run with the task's gold reward.
The SFT model and the preference data of each task and seed are made once and shared by all
methods and both starting points. See `preftune bench --help` and `configs/bench/`.

The models are the built-in tiny model (a 0.8M-parameter Llama with a byte tokenizer), trained for
a few dozen steps: the table compares methods under one small, fixed budget on synthetic tasks with
known gold rewards. It says nothing about how the methods rank on large models, and small
differences are within the seed-to-seed spread shown after each ±.

Regenerate this section with the command below followed by `--readme benchmarks/README.md`.
"""
README_START, README_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def write_readme(report: dict, path: str | Path) -> Path:
    """Write the bench section of a Markdown file (benchmarks/README.md): replace what stands between
    its markers, or append the section to a file without them; the rest of the file is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    block = f"{README_START}\n{README_INTRO}\n{format_markdown(report)}\n{README_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if README_START in text and README_END in text:
        before, rest = text.split(README_START, 1)
        text = before + block + rest.split(README_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path
