"""Make data for oreo (online.md §11): offline rollouts of the starting policy, labelled by outcome.

Before the first iteration the starting (SFT) policy answers `oreo.prompts` training prompts
`oreo.samples_per_prompt` times; each answer gets its gold outcome R in {0, 1}, its reference log-probs
(the starting policy's) and its step ids; the rows are stored in RUN_DIR/data/oreo.jsonl and reused on
--resume. Iteration t trains on the t-th of `iterations` equal slices of the shuffled rows, so the run
makes one pass over the offline data, as the official recipe (1 epoch).
"""
from __future__ import annotations

import random

from preftune.rl.context import RLContext, attach_frozen
from preftune.rl.rows import Row, read_rows, write_rows
from preftune.sampling import sample


class OreoMaker:
    def __init__(self, ctx: RLContext):
        self.ctx = ctx
        self.path = ctx.run_dir / "data" / "oreo.jsonl"
        self.rows = read_rows(self.path) if self.path.exists() else self.collect()

    def collect(self) -> list[Row]:
        ctx, o, r = self.ctx, self.ctx.cfg.oreo, self.ctx.cfg.rollout
        prompts = ctx.task.prompts("train")
        random.Random(ctx.cfg.train.seed).shuffle(prompts)
        samples = sample(ctx.policy, ctx.tokenizer, prompts[:o.prompts], o.samples_per_prompt, r.temperature, r.top_p,
                         r.max_new_tokens, r.batch_size, ctx.seed(0, 30), ctx.cfg.train.progress, "oreo data")
        rows = [Row(samples.prompt_ids[i], [ids], {"outcome": ctx.task.score(prompt, text)})
                for i, prompt, text, ids in samples.flat()]
        attach_frozen(ctx, rows)
        random.Random(ctx.seed(0, 31)).shuffle(rows)
        write_rows(self.path, rows)
        return rows

    def make(self, t: int) -> tuple[list[Row], list[list[int]], dict]:
        n = len(self.rows) // self.ctx.cfg.iterations
        if n < 1:
            raise ValueError(f"oreo: {len(self.rows)} offline rows cannot be split over {self.ctx.cfg.iterations} "
                             "iterations; raise oreo.prompts or lower iterations")
        rows = self.rows[t * n:(t + 1) * n]
        stats = {"rollout/rows": len(rows), "rollout/gold": sum(r.values["outcome"] for r in rows) / len(rows)}
        return rows, [[i] for i in range(len(rows))], stats
