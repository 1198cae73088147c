"""Run under `torchrun --nproc_per_node 2` by tests/test_reference_cache.py: fill the reference cache for
48 pairs, two processes each computing its share. With `--die-after N` process 1 exits abruptly
after N batches of its share (a lost machine, an OOM kill); torchrun then stops process 0 too.
The main process writes the run's summary to OUT (JSON) when the pass completes.

    torchrun --nproc_per_node 2 tests/distributed_reference_cache.py CACHE_DIR OUT [--die-after N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from preftune.data import Tokenization, load_examples
from preftune.fastpath import batch_logps
from preftune.models import build_tiny_model, build_tiny_tokenizer, make_reference
from preftune.reference_cache import prepare_reference_cache

ROWS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1 + a % 3)}
        for a in range(12) for b in range(4)]


def main() -> int:
    from accelerate import Accelerator

    parser = argparse.ArgumentParser()
    parser.add_argument("cache_dir")
    parser.add_argument("out")
    parser.add_argument("--die-after", type=int, default=0)
    args = parser.parse_args()
    accelerator = Accelerator(cpu=True)
    tokenizer = build_tiny_tokenizer()
    examples = Tokenization(tokenizer, 24, 12).many(load_examples(ROWS)[0])
    policy = build_tiny_model(tokenizer, seed=0)
    reference = make_reference("auto", policy, "builtin:tiny", "float32", needs_reference=True)
    batches = 0

    def logps(model, batch, token_level):
        nonlocal batches
        if args.die_after and accelerator.process_index == 1 and batches == args.die_after:
            os._exit(3)  # no cleanup, no exception handler: as a killed process
        batches += 1
        return batch_logps(model, batch, token_level)

    table, summary = prepare_reference_cache(
        reference, examples, list(range(len(examples))), cache_dir=args.cache_dir, precision="fp32",
        token_level=False, pad_token_id=tokenizer.pad_token_id, batch_size=4, logps_fn=logps,
        accelerator=accelerator, save_every=0.0)
    if accelerator.is_main_process:
        with open(args.out, "w") as handle:
            json.dump({**summary, "ids": table.ids.tolist(), "sums": table.sums.tolist()}, handle)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
