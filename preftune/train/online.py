"""The online loop: iterations of sample -> judge -> build -> update (online.md; ARCHITECTURE.md).

Reads top to bottom like train/loop.py. One iteration t:

    begin    snapshot pi_t as "previous"; the reference is "initial" (pi_ref) or "previous" (pi_t);
             MNPO's history shifts
    collect  k samples per prompt from the current policy (KV-cached, batched, seeded by t), an
             opponent's samples if the method plays one, the judge's verdicts, the pair builder's
             rows, and the rows' log-probs under every frozen snapshot the objective needs
             (reference, previous, history), computed once for the iteration
    update   train.steps optimizer steps on those rows. Extragradient (EGPO) and mirror prox
             (Nash-MP) run two phases from one anchor: a half step, then the weights and optimizer
             state go back to the anchor and the full step is taken on data from, or against,
             the half-step policy. OFS-DPO steps a fast and a slow LoRA adapter together.
    end      APO's momentum; fast/slow swap; evaluation (exact duality gap on a task with a finite
             answer set, win-rate against the initial policy); iteration files; checkpoint

Everything an iteration produced stays in RUN_DIR/iterations/iter-NNN/ (samples.jsonl,
pairs.jsonl, metrics.jsonl); RUN_DIR/online_summary.json and online_curve.png hold the
per-iteration curve; RUN_DIR/checkpoints/iter-NNN the state after iteration NNN, from which
`--resume` restarts the iteration that was running when the run stopped.

A method declares what it needs as extras: data extras from the pair builder (win_rate,
soft_label) and policy extras, the log-probs of the rows under a named snapshot: `previous`
(pi_t), `history` (MNPO's past policies, a list), `slow` (OFS-DPO's slow adapter, live).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from preftune.config import DataConfig, RunConfig, TaskDataConfig, TrainConfig, to_dict
from preftune.config import LoraConfig as LoraSection
from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample
from preftune.judges import build_judge, preference_matrix
from preftune.judges.base import JudgeError
from preftune.logps import sequence_logps
from preftune.methods import Objective, build_objective
from preftune.methods.dpo import dpo
from preftune.records import Logps
from preftune.sampling import sample
from preftune.tasks import get_task
from preftune.train.checkpoint import sigterm_as_interrupt
from preftune.train.metrics import StepMetrics
from preftune.train.online_config import OnlineConfig
from preftune.train.online_hooks import Anchor, FastSlowAdapters, PolicySnapshots, trainable_parameters
from preftune.train.online_pairs import Group, build_rows, sample_labels
from preftune.train.plan import BatchPlan
from preftune.train.precision import fp32_master_weights, save_in_dtype
from preftune.train.schedules import lr_multiplier

# What each method's online algorithm does by default (online.md §1-8, §15); "auto" settings of
# the config take these, anything set explicitly wins (e.g. egpo with phases: single is online IPO).
METHOD_DEFAULTS = {
    "online_dpo": dict(reference="fixed", builder="best_worst"),
    "dno": dict(reference="previous", builder="dno_margin"),
    "sppo": dict(reference="previous", builder="best_worst"),
    "inpo": dict(reference="fixed", builder="tournament"),
    "egpo": dict(reference="fixed", builder="best_worst", phases="extragradient"),
    "nash_mp": dict(reference="fixed", builder="opponent", phases="mirror_prox", opponent_samples=2),
    "mnpo": dict(reference="fixed", builder="best_worst"),
    "apo": dict(reference="previous", builder="best_worst", momentum=0.3),
    "ofs_dpo": dict(reference="fixed", builder="best_worst", fast_slow=True),
}
GENERIC_DEFAULTS = dict(reference="fixed", builder="best_worst", phases="single", momentum=0.0, opponent_samples=0,
                        fast_slow=False)
DATA_EXTRAS = ("win_rate", "soft_label")
POLICY_EXTRAS = ("previous", "history", "slow")


@dataclass
class Schedule:
    """The resolved schedule of a run: config values, with "auto" replaced by the method's defaults."""

    reference: str
    phases: str
    momentum: float
    opponent_samples: int
    fast_slow: bool
    builder: str
    history: int  # MNPO players (0 when the objective takes no history)


def resolve_schedule(cfg: OnlineConfig, objective: Objective) -> Schedule:
    defaults = {**GENERIC_DEFAULTS, **METHOD_DEFAULTS.get(objective.terms[0].spec.name, {})}
    s = cfg.schedule
    pick = lambda value, key: defaults[key] if value == "auto" else value  # noqa: E731
    schedule = Schedule(reference=pick(s.reference, "reference"), phases=pick(s.phases, "phases"),
                        momentum=float(pick(s.momentum, "momentum")),
                        opponent_samples=int(pick(s.opponent_samples, "opponent_samples")),
                        fast_slow=bool(pick(s.fast_slow.enabled, "fast_slow")),
                        builder=pick(cfg.pairs.builder, "builder"), history=history_players(objective))
    unknown = sorted(set(objective.extras) - set(DATA_EXTRAS) - set(POLICY_EXTRAS))
    if unknown:
        raise ValueError(f"the online loop provides the extras {DATA_EXTRAS + POLICY_EXTRAS}; "
                         f"{objective.describe()} also needs {unknown}")
    if schedule.reference not in ("fixed", "previous"):
        raise ValueError(f"schedule.reference must be fixed or previous, got {schedule.reference!r}")
    if schedule.phases not in ("single", "extragradient", "mirror_prox"):
        raise ValueError(f"schedule.phases must be single, extragradient or mirror_prox, got {schedule.phases!r}")
    if ("slow" in objective.extras) != schedule.fast_slow:
        raise ValueError("the fast/slow schedule and a method taking `slow` (ofs_dpo) go together")
    if (schedule.builder == "opponent") != (schedule.opponent_samples > 0):
        raise ValueError("the opponent pair builder needs schedule.opponent_samples > 0, and only it uses them")
    return schedule


def history_players(objective: Objective) -> int:
    for term in objective.terms:
        if "history" in term.spec.extras:
            return len(term.params.get("history_weights", term.spec.hyperparameters["history_weights"]))
    return 0


# ----------------------------------------------------------------------------------------------- the run

def run_online(cfg: OnlineConfig, resume: bool = False,
               on_step_end: Callable[[int, int, dict], None] | None = None) -> Path:
    """Run the online loop of `cfg`; returns the run directory. resume: continue a stopped run at the
    iteration it stopped in. on_step_end(iteration, step, metrics) is called after every optimizer step."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from preftune.models import load_causal_lm, load_tokenizer, resolve_dtype
    from preftune.train.loop import release_accelerator

    # The warm start trains with the offline loop, which sets up (and releases) its own accelerator.
    model_path = warm_start(cfg) if cfg.warm_start.enabled else cfg.model.name_or_path
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision={"fp32": "no", "bf16": "bf16"}[cfg.train.precision])
    if accelerator.num_processes > 1:
        raise NotImplementedError("the online loop runs in one process (sampling and judging are not sharded yet)")
    set_seed(cfg.train.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    started = time.perf_counter()

    # --- the game: task, judge, objective and its schedule
    # One task per domain of a domain-shift sequence (one domain by default); a task's gold oracle
    # follows the domain, any other judge stays the same.
    tasks = [get_task(cfg.task, **{**cfg.task_options, **domain}) for domain in cfg.domains or [{}]]
    judges = [build_judge(cfg.judge.kind, task, **cfg.judge.options) for task in tasks] if cfg.judge.kind == "task" \
        else [build_judge(cfg.judge.kind, tasks[0], **cfg.judge.options)] * len(tasks)
    objective = build_objective(cfg.loss)
    schedule = resolve_schedule(cfg, objective)

    # --- the player: the (warm-started) model, its trainable weights and their snapshots
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, cfg.model.dtype, cfg.train.seed, tokenizer)
    fast_slow = None
    if schedule.fast_slow:
        fast_slow = FastSlowAdapters(model, lora_config(cfg.model.lora), cfg.schedule.fast_slow.slow_lr_ratio)
        model = fast_slow.model
    elif cfg.model.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg.model.lora))
    model.to(accelerator.device)
    fp32_master_weights(model)  # a 16-bit model trains on fp32 copies of its trainable weights (train/precision.py)
    snapshots = PolicySnapshots(trainable_parameters(model))
    snapshots.save("initial")
    parameters = fast_slow.parameter_groups(cfg.train.lr) if fast_slow else \
        [{"params": list(snapshots.parameters.values()), "lr": cfg.train.lr}]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    loop = OnlineLoop(cfg, tasks, judges, objective, schedule, model, tokenizer, snapshots, optimizer, fast_slow,
                      accelerator, on_step_end)

    # --- where to start: a fresh run, or the checkpoint of the last completed iteration
    summary = {"method": objective.describe(), "task": cfg.task, "schedule": schedule.__dict__, "iterations": []}
    start = 0
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None and (run_dir / "iterations").exists():
        print("--resume: no completed iteration to resume from; starting at iteration 0")
    if checkpoint is not None:
        start = loop.load_state(checkpoint, summary)
        print(f"resuming {run_dir} at iteration {start} (from {checkpoint.name})")
    else:
        for stale in ("iterations", "checkpoints"):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
        with saved_when_stopped(run_dir, summary, started):
            summary["iterations"].append({"iteration": 0, **loop.evaluate(0), "judge": loop.judge_round})
            loop.check_judge("the initial evaluation")
    shutil.rmtree(run_dir / "iterations" / f"iter-{start:03d}", ignore_errors=True)

    with sigterm_as_interrupt(), saved_when_stopped(run_dir, summary, started):  # completed iterations are saved
        for t in range(start, cfg.iterations):
            iteration_started = time.perf_counter()
            stats = loop.iteration(t)
            row = {"iteration": t + 1, **loop.evaluate(t + 1), **stats, "judge": loop.judge_round,
                   "seconds": round(time.perf_counter() - iteration_started, 2)}
            summary["iterations"].append(row)
            write_summary(run_dir, summary, started)
            loop.save_state(t + 1, summary)
            judge = {k: row["judge"].get(k, 0) for k in ("requests", "failed", "unparseable", "retries")}
            print(f"iteration {t + 1}/{cfg.iterations}: " + ", ".join(
                f"{k} {row[k]:.4f}" for k in ("duality_gap", "win_rate_vs_initial", "sampled_win_rate_vs_initial")
                if k in row) + f" ({row['seconds']:.0f} s); judge: " + ", ".join(f"{v} {k}" for k, v in judge.items()))
            loop.check_judge(f"iteration {t + 1}")  # after its checkpoint: the training it did is kept

    save_in_dtype(model, run_dir / "model", resolve_dtype(cfg.model.dtype))
    tokenizer.save_pretrained(str(run_dir / "model"))
    summary["judge"] = [j.stats.as_dict() for j in judges[:len(set(map(id, judges)))]]
    write_summary(run_dir, summary, started)
    release_accelerator()
    return run_dir


@contextmanager
def saved_when_stopped(run_dir: Path, summary: dict, started: float):
    """A run stopped by its judge (JudgeError: a rejected key, too many failed requests) or by Ctrl-C / SIGTERM:
    every completed iteration has its checkpoint, so --resume continues; online_summary.json says why it stopped."""
    try:
        yield
    except JudgeError as error:
        summary["stopped"] = str(error)
        write_summary(run_dir, summary, started)
        raise
    except KeyboardInterrupt:
        done = len(summary["iterations"]) - 1
        print(f"\ninterrupted in iteration {done + 1}: {done} iterations are saved; --resume redoes iteration "
              f"{done + 1} from its start", file=sys.stderr)
        raise


class OnlineLoop:
    """The state of a run and the three stages of an iteration (collect, update, evaluate)."""

    def __init__(self, cfg: OnlineConfig, tasks: list, judges: list, objective: Objective, schedule: Schedule, model,
                 tokenizer, snapshots: PolicySnapshots, optimizer, fast_slow: FastSlowAdapters | None, accelerator,
                 on_step_end=None):
        self.cfg, self.tasks, self.judges, self.objective, self.schedule = cfg, tasks, judges, objective, schedule
        self.task, self.judge = tasks[0], judges[0]
        if cfg.schedule.fast_slow.cofs and not (fast_slow and len(tasks) > 1):
            raise ValueError("schedule.fast_slow.cofs combines the fast adapters of successive domains: it needs "
                             "the fast/slow schedule and at least two `domains`")
        self.model, self.tokenizer, self.snapshots, self.optimizer = model, tokenizer, snapshots, optimizer
        self.fast_slow, self.accelerator, self.on_step_end = fast_slow, accelerator, on_step_end
        self.device = accelerator.device
        self.train_prompts = self.task.prompts("train")
        random.Random(cfg.train.seed).shuffle(self.train_prompts)
        self.eval_prompts = self.task.prompts("test", cfg.eval.prompts)
        self.initial_eval: dict = {}
        self.judge_round: dict = {}  # the judge's counters since the iteration began (ask_judge)
        if not 0 <= cfg.judge.max_failure_rate <= 1:
            raise ValueError(f"judge.max_failure_rate must be between 0 and 1, got {cfg.judge.max_failure_rate}")

    # -- one iteration ------------------------------------------------------------------------------------

    def iteration(self, t: int) -> dict:
        """Begin, collect, update (one or two phases), end; returns the iteration's statistics."""
        cfg, schedule, snapshots = self.cfg, self.schedule, self.snapshots
        domain = self.domain_of(t)
        self.task, self.judge = self.tasks[domain], self.judges[domain]
        self.judge_round = {}
        directory = self.cfg.run_dir / "iterations" / f"iter-{t:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        snapshots.save("previous")
        history = snapshots.shift_history(schedule.history) if schedule.history else []
        if cfg.schedule.reset_optimizer:
            self.optimizer.state.clear()
        if schedule.momentum and "momentum" not in snapshots:
            snapshots.save("momentum", "initial")  # APO: theta^_0 = theta_0

        stats: dict = {}
        if schedule.phases == "single":
            examples = self.collect(t, "full", directory, stats, history)
            self.update(t, "full", examples, directory, stats)
        else:
            anchor = Anchor(snapshots, self.optimizer)
            examples = self.collect(t, "half", directory, stats, history)
            self.update(t, "half", examples, directory, stats)
            snapshots.save("half")
            if schedule.phases == "extragradient":  # EGPO: the full step's data comes from theta_{t+1/2}
                examples = self.collect(t, "full", directory, stats, history)
                anchor.restore()
            else:  # mirror prox: the full step samples the anchor pi_k and plays the half-step policy
                anchor.restore()
                examples = self.collect(t, "full", directory, stats, history, opponent="half")
            self.update(t, "full", examples, directory, stats)

        if schedule.momentum:
            snapshots.extrapolate("momentum", schedule.momentum)
        if self.fast_slow and cfg.schedule.fast_slow.swap and \
                stats.get("full/slow_dpo_loss", math.inf) < stats.get("full/dpo_loss", -math.inf):
            self.fast_slow.swap(self.optimizer)
            stats["swapped"] = True
        if len(self.tasks) > 1 and t == self.last_iteration_of(domain):
            if cfg.schedule.fast_slow.cofs and domain > 0:
                stats.update(self.cofs_combine(domain))
            snapshots.save(f"domain:{domain}")
        stats["domain"] = domain
        return stats

    def ask_judge(self, ask: Callable):
        """A round of questions to the judge (`ask()`), its counters added to the iteration's `judge_round`."""
        mark = self.judge.stats.mark()
        out = ask()
        for key, value in self.judge.stats.since(mark).items():
            self.judge_round[key] = (self.judge_round.get(key) or value) if key == "first_error" else \
                self.judge_round.get(key, 0) + value
        return out

    def check_judge(self, what: str) -> None:
        """Stop the run (JudgeError, with the counts and the first error) when more than judge.max_failure_rate of
        the iteration's requests to the judge failed, instead of training on, or reporting, what little came back."""
        counts, limit = self.judge_round, self.cfg.judge.max_failure_rate
        failures = counts.get("failed", 0) + counts.get("unparseable", 0)
        if counts.get("requests") and failures > limit * counts["requests"]:
            raise JudgeError(f"{what}: the judge failed on {failures} of {counts['requests']} requests "
                             f"({counts['failed']} failed, {counts['unparseable']} unparseable), more than "
                             f"judge.max_failure_rate = {limit}; the first error: {counts['first_error']}")

    def domain_of(self, t: int) -> int:
        """The domain of iteration t: the iterations are split into equal consecutive blocks."""
        return t * len(self.tasks) // self.cfg.iterations

    def last_iteration_of(self, domain: int) -> int:
        return max(t for t in range(self.cfg.iterations) if self.domain_of(t) == domain)

    def cofs_combine(self, domain: int) -> dict:
        """COFS-DPO (online.md §8 [R]): the fast adapter becomes w theta_{domain-1} + (1 - w) theta_domain, with w
        on a grid of 11 values minimising the fast adapter's DPO loss on a replay memory made of the last
        iteration's pairs of every domain so far (`cofs_memory` rows each), scored against pi_ref."""
        fast = [name for name in self.snapshots.parameters if f".{self.fast_slow.fast}." in name]
        old = self.snapshots.saved[f"domain:{domain - 1}"]
        new = {name: self.snapshots.parameters[name].detach().clone() for name in fast}
        memory = []
        for d in range(domain + 1):
            t = self.last_iteration_of(d)
            rows = [r for r in read_jsonl(self.cfg.run_dir / "iterations" / f"iter-{t:03d}" / "pairs.jsonl")
                    if r["phase"] == "full" and r["iteration"] == t and len(r["response_ids"]) == 2]
            memory += random.Random(self.cfg.train.seed + d).sample(rows, min(self.cfg.schedule.fast_slow.cofs_memory,
                                                                              len(rows)))
        examples = self.freeze(memory, [])
        beta = self.fast_term_beta()
        losses = {}
        for w in [k / 10 for k in range(11)]:
            with torch.no_grad():
                for name in fast:
                    self.snapshots.parameters[name].copy_(w * old[name] + (1 - w) * new[name])
            losses[w] = self.memory_dpo_loss(examples, beta)
        best = min(losses, key=losses.get)
        with torch.no_grad():
            for name in fast:
                self.snapshots.parameters[name].copy_(best * old[name] + (1 - best) * new[name])
        return {"cofs_weight": best, "cofs_memory_loss": round(losses[best], 6),
                "cofs_memory_loss_without": round(losses[0.0], 6), "cofs_memory_rows": len(examples)}

    @torch.no_grad()
    def memory_dpo_loss(self, examples: list[TokenizedExample], beta: float, batch_size: int = 64) -> float:
        total = 0.0
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], self.tokenizer.pad_token_id).to(self.device)
            policy = sequence_logps(self.model, batch)
            reference = Logps(sum=batch.extras["logps:reference"].to(policy.sum.dtype), length=policy.length)
            total += float(dpo(policy, reference, beta=beta).loss.sum())
        return total / max(1, len(examples))

    # -- collect: sample, judge, build, freeze -------------------------------------------------------------

    def prompts_for(self, t: int) -> list:
        """Iteration t's prompts: consecutive slices of the shuffled train prompts (disjoint while they last,
        as DNO's and SPPO's prompt splits), wrapping around."""
        n, pool = self.cfg.prompts_per_iteration, self.train_prompts
        return [pool[(t * n + i) % len(pool)] for i in range(n)]

    def collect(self, t: int, phase: str, directory: Path, stats: dict, history: list[str],
                opponent: str | None = None) -> list[TokenizedExample]:
        cfg, s = self.cfg, self.cfg.sampler
        seed = cfg.train.seed * 1_000_003 + 10 * t + (phase == "full")
        prompts = self.prompts_for(t)
        samples = sample(self.model, self.tokenizer, prompts, s.samples_per_prompt, s.temperature, s.top_p,
                         s.max_new_tokens, s.batch_size, seed, cfg.train.progress, f"iter {t} sample ({phase})", s.top_k)
        opponents = None
        if self.schedule.opponent_samples:
            with self.snapshots.swapped(opponent or "previous"):
                opponents = sample(self.model, self.tokenizer, prompts, self.schedule.opponent_samples, s.temperature,
                                   s.top_p, s.max_new_tokens, s.batch_size, seed + 5, False, top_k=s.top_k).texts
        judged = time.perf_counter()
        matrices = self.ask_judge(lambda: preference_matrix(self.judge, list(zip(prompts, samples.texts)), opponents))
        self.check_judge(f"iteration {t + 1}, judging the samples ({phase})")
        groups = [Group(p, texts, m, None) if opponents is None else Group(p, texts, [], m)
                  for p, texts, m in zip(prompts, samples.texts, matrices)]
        if cfg.judge.labels == "bernoulli":
            sample_labels(groups, random.Random(seed))
        elif cfg.judge.labels != "probability":
            raise ValueError(f"judge.labels must be probability or bernoulli, got {cfg.judge.labels!r}")
        rows = build_rows(self.schedule.builder, groups, cfg.pairs.margin, cfg.pairs.min_positive)
        records = [self.record(t, phase, samples, r) for r in rows]
        records += self.replay(t, len(records)) if phase == "full" else []
        write_jsonl(directory / "samples.jsonl", [
            {"phase": phase, "prompt": g.prompt, "responses": g.responses, "matrix": g.matrix,
             **({"opponents": opponents[i], "opponent_matrix": g.opponent_matrix} if opponents else {})}
            for i, g in enumerate(groups)], append=True)
        write_jsonl(directory / "pairs.jsonl", records, append=True)
        stats.update({f"{phase}/samples": sum(map(len, samples.texts)), f"{phase}/rows": len(records),
                      f"{phase}/sampling_tokens_per_s": round(samples.tokens_per_s, 1),
                      f"{phase}/judge_seconds": round(time.perf_counter() - judged, 3)})
        return self.freeze(records, history)

    @staticmethod
    def record(t: int, phase: str, samples, row) -> dict:
        """A row as written to pairs.jsonl: texts for reading, token ids (as sampled) for training."""
        g = row.group
        return {"iteration": t, "phase": phase, "prompt": samples.prompts[g],
                "responses": [samples.texts[g][k] for k in row.picks], "win_rate": row.win_rate,
                **({"soft_label": row.soft_label} if row.soft_label is not None else {}),
                **({"preference": row.preference} if row.preference is not None else {}),
                "prompt_ids": samples.prompt_ids[g], "response_ids": [samples.ids[g][k] for k in row.picks]}

    def replay(self, t: int, new_rows: int) -> list[dict]:
        """DNO-Prct's replay (online.md §1b step 4): up to `replay` x the new rows from iteration t-1, half that
        from t-2, and so on, read back from their pairs.jsonl (seeded choice, not regenerated)."""
        fraction, out = self.cfg.pairs.replay, []
        rng = random.Random(self.cfg.train.seed + t)
        for back in range(1, t + 1):
            take = int(fraction / 2 ** (back - 1) * new_rows)
            if take < 1:
                break
            path = self.cfg.run_dir / "iterations" / f"iter-{t - back:03d}" / "pairs.jsonl"
            old = [r for r in read_jsonl(path) if r["phase"] == "full" and r["iteration"] == t - back]
            out += [{**r, "replayed_from": t - back} for r in rng.sample(old, min(take, len(old)))]
        return out

    def freeze(self, records: list[dict], history: list[str]) -> list[TokenizedExample]:
        """Token rows with their data extras and their log-probs under the frozen snapshots the objective needs."""
        examples = []
        for r in records:
            extras = {"win_rate": r["win_rate"], **({"soft_label": r["soft_label"]} if "soft_label" in r else {})}
            examples.append(TokenizedExample(r["prompt_ids"], r["response_ids"], "pairwise" if len(r["response_ids"])
                                             == 2 else "sample", extras=extras))
        frozen = {"reference": "initial" if self.schedule.reference == "fixed" else "previous"}
        if "previous" in self.objective.extras:
            frozen["previous"] = "previous"
        frozen.update({name: name for name in history})
        for key, snapshot in frozen.items():
            values = self.logps_under(snapshot, examples)
            for example, value in zip(examples, values):
                example.extras[f"logps:{key}"] = value
        return examples

    @torch.no_grad()
    def logps_under(self, snapshot: str, examples: list[TokenizedExample], batch_size: int = 64) -> list[list[float]]:
        out = []
        with self.snapshots.swapped(snapshot), self.accelerator.autocast():
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start:start + batch_size], self.tokenizer.pad_token_id).to(self.device)
                out += sequence_logps(self.model, batch).sum.float().cpu().tolist()
        return out

    # -- update ----------------------------------------------------------------------------------------------

    def update(self, t: int, phase: str, examples: list[TokenizedExample], directory: Path, stats: dict) -> None:
        """cfg.train.steps optimizer steps (or train.epochs over the rows) of the objective on `examples`."""
        train = self.cfg.train
        if not examples:
            stats[f"{phase}/steps"] = 0
            return
        batch_size = min(train.batch_size, len(examples))
        plan = BatchPlan(len(examples), batch_size, 1, 1, train.seed * 1_000_003 + 10 * t + (phase == "full"),
                         train.steps, train.epochs)
        self.model.train()
        totals: dict[str, float] = {}
        bar = tqdm(range(plan.total_steps), desc=f"iter {t} train ({phase})", disable=not train.progress,
                   dynamic_ncols=True, mininterval=0.5, leave=False)
        for step in bar:
            multiplier = lr_multiplier(step, plan.total_steps, int(train.warmup_ratio * plan.total_steps),
                                       train.schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * multiplier
            batch = collate([examples[i] for i in plan.step_indices(step)], self.tokenizer.pad_token_id).to(self.device)
            metrics = self.step(batch)
            metrics["lr"] = multiplier * train.lr
            with (directory / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"phase": phase, "step": step + 1, **metrics}) + "\n")
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / plan.total_steps
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if self.on_step_end is not None:
                self.on_step_end(t, step + 1, metrics)
        stats.update({f"{phase}/steps": plan.total_steps,
                      **{f"{phase}/{k}": round(v, 6) for k, v in totals.items() if k != "lr"}})

    def step(self, batch) -> dict:
        """One optimizer step on one batch: frozen log-probs from the rows, the policy's from a forward pass."""
        stats = StepMetrics(self.objective.input_kind)
        extras = {k: v for k, v in batch.extras.items() if not k.startswith("logps:")}
        with self.accelerator.autocast():
            policy = sequence_logps(self.model, batch)
            frozen = {k[len("logps:"):]: Logps(sum=v.to(policy.sum.dtype), length=policy.length)
                      for k, v in batch.extras.items() if k.startswith("logps:")}
            if "previous" in frozen:
                extras["previous"] = frozen["previous"]
            if self.schedule.history:
                extras["history"] = [frozen[f"history:{j}"] for j in range(self.schedule.history)]
            slow_loss = None
            if self.fast_slow:
                extras["slow"], slow_loss = self.slow_module_loss(batch, frozen["reference"])
            out = self.objective(policy, frozen["reference"], extras)
            loss = out.loss.mean() + (slow_loss.mean() if slow_loss is not None else 0.0)
        self.accelerator.backward(loss)
        max_norm = self.cfg.train.max_grad_norm
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats.add(out, policy)
        metrics = stats.reduce(self.accelerator)
        metrics["grad_norm"] = float(grad_norm)
        if slow_loss is not None:
            metrics["slow_dpo_loss"] = float(slow_loss.detach().mean())
        return metrics

    def slow_module_loss(self, batch, reference: Logps):
        """OFS-DPO's slow adapter: its plain DPO loss (at the fast term's beta) and its detached log-probs."""
        with self.fast_slow.active(self.fast_slow.slow):
            slow = sequence_logps(self.model, batch)
        return slow.detach(), dpo(slow, reference, beta=self.fast_term_beta()).loss

    def fast_term_beta(self) -> float:
        term = self.objective.terms[0]
        return term.params.get("beta", term.spec.hyperparameters["beta"])

    # -- evaluate ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, t: int) -> dict:
        """Exact game metrics of the policy's distribution over the task's answer set (when it has one),
        and the judge's win-rate of held-out samples against the initial policy's samples."""
        from preftune.tasks.intransitive import game_metrics, style_distribution

        e, s = self.cfg.eval, self.cfg.sampler
        metrics: dict = {}
        if hasattr(self.task, "preference_matrix") and hasattr(self.task, "canonical_responses"):
            probs, mass = style_distribution(self.model, self.tokenizer, self.eval_prompts,
                                             self.task.canonical_responses())
            if t == 0:
                self.initial_eval["probs"] = probs
            metrics.update(game_metrics(self.task.preference_matrix(), probs, self.initial_eval["probs"], e.gap_beta))
            metrics["answer_set_mass"] = float(mass.mean())
            for d, task in enumerate(self.tasks if len(self.tasks) > 1 else []):  # forgetting across domains
                scores = game_metrics(task.preference_matrix(), probs, self.initial_eval["probs"])
                metrics.update({f"domain{d}/{k}": scores[k] for k in ("duality_gap", "win_rate_vs_initial")})
        texts = sample(self.model, self.tokenizer, self.eval_prompts, e.samples_per_prompt, e.temperature, s.top_p,
                       s.max_new_tokens, s.batch_size, 424242, False).texts
        if t == 0 or "texts" not in self.initial_eval:
            with self.snapshots.swapped("initial"):
                self.initial_eval["texts"] = sample(self.model, self.tokenizer, self.eval_prompts,
                                                    e.samples_per_prompt, e.temperature, s.top_p, s.max_new_tokens,
                                                    s.batch_size, 525252, False).texts
        items = [(p, a, b) for p, mine, theirs in zip(self.eval_prompts, texts, self.initial_eval["texts"])
                 for a, b in zip(mine, theirs)]
        verdicts = [v for v in self.ask_judge(lambda: self.judge.compare_many(items)) if v is not None]
        if verdicts:
            metrics["sampled_win_rate_vs_initial"] = sum(verdicts) / len(verdicts)
        metrics["gold_score"] = sum(self.task.score(p, x) for p, xs in zip(self.eval_prompts, texts) for x in xs) / \
            max(1, sum(map(len, texts)))
        return metrics

    # -- checkpoints -------------------------------------------------------------------------------------------

    def save_state(self, completed: int, summary: dict) -> None:
        """The state after `completed` iterations, written atomically (a .tmp directory renamed when whole)."""
        root = self.cfg.run_dir / "checkpoints"
        final = root / f"iter-{completed:03d}"
        partial = final.with_name(final.name + ".tmp")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        torch.save({"completed": completed, "weights": {k: p.detach().cpu() for k, p in self.snapshots.parameters.items()},
                    "snapshots": self.snapshots.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "fast_slow": (self.fast_slow.fast, self.fast_slow.slow) if self.fast_slow else None,
                    "initial_eval": self.initial_eval, "summary": summary, "rng": torch.get_rng_state()},
                   partial / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))[:-2]:
            shutil.rmtree(old)

    def load_state(self, path: Path, summary: dict) -> int:
        state = torch.load(path / "state.pt", weights_only=False)
        with torch.no_grad():
            for key, p in self.snapshots.parameters.items():
                p.copy_(state["weights"][key])
        self.snapshots.load_state_dict(state["snapshots"])
        if self.fast_slow and state["fast_slow"] and state["fast_slow"][0] != self.fast_slow.fast:
            self.fast_slow.swap(self.optimizer)
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.initial_eval = state["initial_eval"]
        summary.update(state["summary"])
        torch.set_rng_state(state["rng"])
        return state["completed"]


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "state.pt").exists()
                   and not p.name.endswith(".tmp")) if root.exists() else []
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------- helpers

def lora_config(section: LoraSection):
    from peft import LoraConfig

    return LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=section.target_modules, task_type="CAUSAL_LM")


def warm_start(cfg: OnlineConfig) -> str:
    """The SFT model the run starts from: the task's demonstrations, trained once with the offline
    loop and cached under $PREFTUNE_CACHE/online-warm-start/<hash of the settings>."""
    from preftune.train.loop import train

    w = cfg.warm_start
    # A sample of the demonstrations stands for the task's content: changing the task changes the key.
    settings = {"task": cfg.task, "options": cfg.task_options, "model": cfg.model.name_or_path,
                "dtype": cfg.model.dtype, "warm_start": to_dict(w), "seed": cfg.train.seed,
                "demonstrations": get_task(cfg.task, **cfg.task_options).demonstrations(16, w.noise, cfg.train.seed)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(os.environ.get("PREFTUNE_CACHE", Path.home() / ".cache" / "preftune")) / "online-warm-start" / key
    if (root / "model" / "config.json").exists():
        return str(root / "model")
    train(RunConfig(name=f"warm-start-{key}", output_dir=str(root), loss="sft", reference="none",
                    model=replace(cfg.model, lora=LoraSection()),
                    data=DataConfig(source=f"task:{cfg.task}", kind="sft", max_length=64, max_prompt_length=32,
                                    task=TaskDataConfig(options=dict(cfg.task_options),
                                                        demonstrations=w.demonstrations, noise=w.noise)),
                    train=TrainConfig(steps=w.steps, batch_size=w.batch_size, lr=w.lr, warmup_ratio=0.1,
                                      schedule="cosine", seed=cfg.train.seed, progress=cfg.train.progress)))
    (root / "warm_start.json").write_text(json.dumps(settings, indent=1))
    return str(root / "model")


def write_jsonl(path: Path, rows: list[dict], append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_summary(run_dir: Path, summary: dict, started: float) -> None:
    from preftune.report.online_plots import plot_online_curve

    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "online_summary.json").write_text(json.dumps(summary, indent=1))
    plot_online_curve(summary, run_dir / "online_curve.png")
