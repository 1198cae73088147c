"""Make an iteration's data: sample from the current policy, ask the judge, build rows, and freeze the
log-probs of those rows under every snapshot the objective needs (computed once per iteration)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample
from preftune.judges import preference_matrix
from preftune.logps import sequence_logps
from preftune.sampling import sample
from preftune.train.distributed import gathered
from preftune.train.online_judge import ask_judge, check_judge
from preftune.train.online_pairs import Group, build_rows, sample_labels
from preftune.train.online_replay import replay, write_jsonl
from preftune.train.online_state import OnlineLoop


def prompts_for(loop: OnlineLoop, t: int) -> list:
    """Iteration t's prompts: consecutive slices of the shuffled train prompts (disjoint while they last,
    as DNO's and SPPO's prompt splits), wrapping around."""
    n, pool = loop.cfg.prompts_per_iteration, loop.train_prompts
    return [pool[(t * n + i) % len(pool)] for i in range(n)]


def collect(loop: OnlineLoop, t: int, phase: str, directory: Path, stats: dict, history: list[str],
            opponent: str | None = None) -> list[TokenizedExample]:
    """Sample k responses per prompt (and an opponent's, when the method plays one), judge them, build the
    rows (plus replayed ones in the full phase), write them to the iteration's directory, and freeze them.

    Under several processes each takes every W-th prompt (and replayed row) and does all of this for
    its share; the frozen rows are gathered once, and the main process writes the files."""
    cfg, s, accelerator = loop.cfg, loop.cfg.sampler, loop.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    seed = cfg.train.seed * 1_000_003 + 10 * t + (phase == "full") + 7919 * rank
    prompts = prompts_for(loop, t)[rank::world]
    samples = sample(loop.model, loop.tokenizer, prompts, s.samples_per_prompt, s.temperature, s.top_p,
                     s.max_new_tokens, s.batch_size, seed, cfg.train.progress, f"iter {t} sample ({phase})", s.top_k)
    opponents = None
    if loop.schedule.opponent_samples:
        with loop.snapshots.swapped(opponent or "previous"):
            opponents = sample(loop.model, loop.tokenizer, prompts, loop.schedule.opponent_samples, s.temperature,
                               s.top_p, s.max_new_tokens, s.batch_size, seed + 5, False, top_k=s.top_k).texts
    judged = time.perf_counter()
    matrices = ask_judge(loop, lambda: preference_matrix(loop.judge, list(zip(prompts, samples.texts)), opponents))
    check_judge(loop, f"iteration {t + 1}, judging the samples ({phase})")  # nothing is trained on a failed round
    groups = [Group(p, texts, m, None) if opponents is None else Group(p, texts, [], m)
              for p, texts, m in zip(prompts, samples.texts, matrices)]
    if cfg.judge.labels == "bernoulli":
        sample_labels(groups, random.Random(seed))
    elif cfg.judge.labels != "probability":
        raise ValueError(f"judge.labels must be probability or bernoulli, got {cfg.judge.labels!r}")
    rows = build_rows(loop.schedule.builder, groups, cfg.pairs.margin, cfg.pairs.min_positive)
    records = [record(t, phase, samples, r) for r in rows]
    # Replay sizes itself on this iteration's row count, summed over the processes; they all read the
    # same past rows and each freezes every W-th of them.
    fresh = sum(gathered(accelerator, len(records)))
    records += replay(loop.cfg, t, fresh)[rank::world] if phase == "full" else []
    judge_seconds = time.perf_counter() - judged
    shares = gathered(accelerator, (records, freeze(loop, records, history), [
        {"phase": phase, "prompt": g.prompt, "responses": g.responses, "matrix": g.matrix,
         **({"opponents": opponents[i], "opponent_matrix": g.opponent_matrix} if opponents else {})}
        for i, g in enumerate(groups)], sum(map(len, samples.texts)), samples.tokens_per_s, judge_seconds))
    records = [r for share in shares for r in share[0]]
    if accelerator.is_main_process:
        write_jsonl(directory / "samples.jsonl", [g for share in shares for g in share[2]], append=True)
        write_jsonl(directory / "pairs.jsonl", records, append=True)
    stats.update({f"{phase}/samples": sum(share[3] for share in shares), f"{phase}/rows": len(records),
                  f"{phase}/sampling_tokens_per_s": round(sum(share[4] for share in shares), 1),  # all processes
                  f"{phase}/judge_seconds": round(max(share[5] for share in shares), 3)})
    return [example for share in shares for example in share[1]]


def record(t: int, phase: str, samples, row) -> dict:
    """A row as written to pairs.jsonl: texts for reading, token ids (as sampled) for training."""
    g = row.group
    return {"iteration": t, "phase": phase, "prompt": samples.prompts[g],
            "responses": [samples.texts[g][k] for k in row.picks], "win_rate": row.win_rate,
            **({"soft_label": row.soft_label} if row.soft_label is not None else {}),
            **({"preference": row.preference} if row.preference is not None else {}),
            "prompt_ids": samples.prompt_ids[g], "response_ids": [samples.ids[g][k] for k in row.picks]}


def freeze(loop: OnlineLoop, records: list[dict], history: list[str]) -> list[TokenizedExample]:
    """Token rows with their data extras and their log-probs under the frozen snapshots the objective needs."""
    examples = []
    for r in records:
        extras = {"win_rate": r["win_rate"], **({"soft_label": r["soft_label"]} if "soft_label" in r else {})}
        examples.append(TokenizedExample(r["prompt_ids"], r["response_ids"], "pairwise" if len(r["response_ids"])
                                         == 2 else "sample", extras=extras))
    frozen = {"reference": "initial" if loop.schedule.reference == "fixed" else "previous"}
    if "previous" in loop.objective.extras:
        frozen["previous"] = "previous"
    frozen.update({name: name for name in history})
    for key, snapshot in frozen.items():
        values = logps_under(loop, snapshot, examples)
        for example, value in zip(examples, values):
            example.extras[f"logps:{key}"] = value
    return examples


@torch.no_grad()
def logps_under(loop: OnlineLoop, snapshot: str, examples: list[TokenizedExample], batch_size: int = 64) -> list[list[float]]:
    out = []
    with loop.snapshots.swapped(snapshot), loop.accelerator.autocast():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], loop.tokenizer.pad_token_id).to(loop.device)
            out += sequence_logps(loop.model, batch).sum.float().cpu().tolist()
    return out
