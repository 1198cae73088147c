"""What every method of a (task, seed) shares, made once and cached on disk: the seed's base model,
the task's SFT model, the preference samples and the SFT model's baseline scores (steps 1-4 of the
protocol in bench/__init__.py).

Tasks that share demonstrations share an SFT model (arithmetic, noisy-labels and mixed-margins
differ only in labelling and scoring), and tasks that also share train prompts share the SFT
model's samples: both are stored under a hash of what determines them.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from preftune.bench.config import BenchConfig
from preftune.config import RunConfig, to_dict


def assets_dir(cfg: BenchConfig, task: str, seed: int) -> Path:
    return cfg.run_dir / "assets" / task / f"seed{seed}"


def digest(*parts) -> str:
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
        key = digest(demos)
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
        _PRETRAIN_KEYS[settings] = digest(pretrain_rows(cfg, seed), to_dict(cfg.pretrain), _pretrain_lengths(cfg),
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
    from preftune.train.runner import run_training

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
        run_training(pretrain_cfg, data_source=pretrain_rows(cfg, seed))
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
    return digest(rows, to_dict(cfg.sft), settings.sft_steps, settings.max_length, settings.max_prompt_length, seed,
                   str(base_model_dir(cfg, seed)))


def sft_model_dir(cfg: BenchConfig, task_name: str, seed: int) -> Path:
    return cfg.run_dir / "assets" / "sft" / sft_key(cfg, task_name, seed) / "sft" / "model"


def train_sft(cfg: BenchConfig, task_name: str, seed: int, progress: bool = False) -> dict:
    """SFT of the seed's base model on the task's demonstrations, unless already made."""
    from preftune.config import DataConfig, TaskDataConfig, TrainConfig
    from preftune.train.runner import run_training

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
    run_training(sft_cfg)
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
        digest(sft["model"], prompts, to_dict(cfg.pairs), settings.max_new_tokens, seed) + ".json")
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
