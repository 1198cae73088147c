"""From a data config to tokenized train and held-out sets that fit the objective's input kind."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Callable

from preftune.data.formats import DataError, LoadReport, describe_source, load_examples, pairs_to_unpaired
from preftune.data.load_report import truncation_line
from preftune.data.tokenize import Tokenization, TokenizedExample


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    kind: str
    report: LoadReport
    truncation: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)  # how the rows were made, e.g. {"task": sampling statistics}

    def summary(self) -> dict:
        return {"kind": self.kind, "train_examples": len(self.train), "eval_examples": len(self.eval),
                "load": self.report.as_dict(), "truncation": self.truncation, **self.origin}


# Which data kinds each objective input kind can train on (pairs are split for pointwise methods).
COMPATIBLE = {"pairwise": {"pairwise"}, "pointwise": {"pointwise", "pairwise"},
              "listwise": {"listwise"}, "any": {"pairwise", "pointwise", "sft", "listwise"}}


def _main_process() -> bool:
    """Whether to print: the first process of a launcher-started run (RANK is set by torchrun and
    accelerate), or a plain run."""
    return os.environ.get("RANK", "0") == "0"


def prepare_data(data_cfg, tokenizer, input_kind: str, seed: int = 0, source=None,
                 log: Callable[[str], None] | None = print) -> PreparedData:
    """Load, validate, adapt and tokenize. `source` overrides data_cfg.source (e.g. an in-memory list).

    The load summary (rows kept, rows skipped by reason, unused columns, truncation) is written
    through `log` (on the first process only) and kept in `PreparedData.summary()`."""
    source = data_cfg.source if source is None else source
    if input_kind not in COMPATIBLE:  # "rollout": preftune/rl trains on its own samples; diffusion kinds: images
        command = ("preftune rl --config configs/rl/<method>.yaml" if input_kind == "rollout"
                   else "preftune diffusion train --config configs/diffusion/<method>.yaml")
        raise DataError(f"the objective takes {input_kind} data, which `preftune train` does not read: "
                        f"train it with `{command}`")
    if source in ("", None):
        raise DataError("no training data: set data.source to a file, a datasets directory or hf:owner/name")
    columns = dict(extra_columns=tuple(data_cfg.extra_columns), extra_responses=tuple(data_cfg.extra_responses),
                   columns=dict(getattr(data_cfg, "columns", {}) or {}))
    examples, report = load_examples(source, data_cfg.kind, data_cfg.format, data_cfg.on_bad_row,
                                     data_cfg.split, data_cfg.limit, **columns)
    kind = examples[0].kind
    if kind not in COMPATIBLE[input_kind]:
        raise DataError(f"the objective takes {input_kind} data but {describe_source(source)} holds {kind} rows")
    if input_kind == "pointwise" and kind == "pairwise":
        examples, kind = pairs_to_unpaired(examples), "pointwise"
    eval_examples = []
    if data_cfg.eval_source:
        eval_examples, _ = load_examples(data_cfg.eval_source, data_cfg.kind, data_cfg.format,
                                         data_cfg.on_bad_row, data_cfg.split, **columns)
        if input_kind == "pointwise" and eval_examples[0].kind == "pairwise":
            eval_examples = pairs_to_unpaired(eval_examples)
    elif data_cfg.eval_fraction > 0:
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(len(examples) * data_cfg.eval_fraction))
        held = set(order[:n_eval])
        eval_examples = [ex for i, ex in enumerate(examples) if i in held]
        examples = [ex for i, ex in enumerate(examples) if i not in held]
    tokenization = Tokenization(tokenizer, data_cfg.max_length, data_cfg.max_prompt_length, data_cfg.truncation)
    train = tokenization.many(examples, data_cfg.on_bad_row, report)
    held_out = tokenization.many(eval_examples, data_cfg.on_bad_row)
    truncation = tokenization.stats.as_dict()
    if not train:
        dropped = truncation["examples_dropped"]
        raise DataError(report.nothing_usable(describe_source(source)) if not dropped else
                        f"{describe_source(source)}: every example was dropped ({dropped} by truncation at "
                        f"max_length={data_cfg.max_length}" + (f"; skipped rows: {report.reasons()}" if report.skipped
                                                               else "") + ")")
    if log is not None and _main_process():
        for line in report.lines() + [truncation_line(truncation, data_cfg.max_length, data_cfg.max_prompt_length)]:
            log(line)
    return PreparedData(train, held_out, kind, report, truncation)
