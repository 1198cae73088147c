"""Run under `torchrun --nproc_per_node 2` by tests/test_online_loop.py: online iterations on the tiny model,
then each process writes a digest of its final weights to OUT/rank-R.txt, so the test can check that
the processes, which sampled, judged and trained on different shares, hold one model.

    torchrun --nproc_per_node 2 tests/distributed_online.py CONFIG OUT [overrides...]
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

import preftune.train.online as online
from preftune.train.online_config import load_online_config

LOOPS = []


class RecordedLoop(online.OnlineLoop):
    """The run's state, kept for reading its model afterwards."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        LOOPS.append(self)


def main() -> int:
    from accelerate import PartialState

    config, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    online.OnlineLoop = RecordedLoop
    online.run_online(load_online_config(config, overrides))
    loop = LOOPS[-1]
    digest = hashlib.sha256()
    for name, tensor in sorted(loop.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    (out / f"rank-{PartialState().process_index}.txt").write_text(digest.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
