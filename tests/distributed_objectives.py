"""Run under `torchrun --nproc_per_node W` by tests/test_distributed.py: each process feeds its share of
fixed batches to objectives whose losses use batch statistics, and compares with one process
computing the whole global batch. Prints `same: <objective>` per objective; exits non-zero on a
difference.

The processes are connected the way the training loop connects them (train/distributed.py), so
this checks that BCO's shift, beta-DPO's margin statistics and filter, KTO's reference point and
TPO's gold token mean are taken over every process's share of the batch, and that listwise groups
(each list standardised on its own) need nothing from the other processes.
"""
from __future__ import annotations

import sys

import torch

from preftune.methods import build_objective
from preftune.methods.state import CrossProcess
from preftune.records import Logps
from preftune.train.distributed import cross_process_ops

OBJECTIVES = {
    "beta_dpo": ({"beta_dpo": {"beta": 0.5, "alpha": 0.6, "filter_ratio": 0.5}}, 2, ()),
    "bco_pair": ({"bco_pair": {"beta": 0.5}}, 2, ()),
    "kto": ({"kto": {"beta": 0.5}}, 2, ("label",)),
    "tpo": ({"tpo": {"beta": 0.5}}, 3, ()),
    "adpo_listwise": ({"adpo_listwise": {}}, 4, ("scores",)),
    "dpo + 0.3*bco_pair": ("dpo + 0.3*bco_pair", 2, ()),
}
STEPS, PER_PROCESS = 3, 4


def logps(generator: torch.Generator, batch: int, k: int) -> Logps:
    lengths = torch.randint(1, 9, (batch, k), generator=generator).double()
    return Logps(sum=-lengths * torch.rand(batch, k, generator=generator, dtype=torch.float64), length=lengths)


def extras(generator: torch.Generator, names, batch: int, k: int) -> dict:
    out = {}
    if "label" in names:
        out["label"] = torch.rand(batch, generator=generator) < 0.5
    if "scores" in names:
        out["scores"] = torch.rand(batch, k, generator=generator, dtype=torch.float64)
    return out


def share(value, rank: int):
    if isinstance(value, Logps):
        return Logps(sum=share(value.sum, rank), length=share(value.length, rank))
    if isinstance(value, dict):
        return {key: share(v, rank) for key, v in value.items()}
    return value[rank * PER_PROCESS:(rank + 1) * PER_PROCESS]


def same_state(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[key], b[key]) for key in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return abs(a - b) <= 1e-12 * max(1.0, abs(a))


def main() -> int:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    failures = []
    for name, (loss, k, extra_names) in OBJECTIVES.items():
        torch.manual_seed(11)  # both objectives' filter generators start alike, as after set_seed
        whole, parts = build_objective(loss), build_objective(loss)
        whole.set_processes(CrossProcess())
        parts.set_processes(cross_process_ops(accelerator))
        generator = torch.Generator().manual_seed(5)  # the same global batches on every process
        for step in range(STEPS):
            size = PER_PROCESS * world
            policy, reference = logps(generator, size, k), logps(generator, size, k)
            data = extras(generator, extra_names, size, k)
            expected = whole(policy, reference, data)
            got = parts(share(policy, rank), share(reference, rank), share(data, rank))
            if not torch.allclose(got.loss, share(expected.loss, rank), rtol=1e-12, atol=1e-12):
                failures.append(f"{name} step {step}: loss {got.loss.tolist()} != {share(expected.loss, rank).tolist()}")
            for key, value in got.metrics.items():
                if not torch.allclose(value.double(), share(expected.metrics[key], rank).double(), atol=1e-12):
                    failures.append(f"{name} step {step}: metric {key}")
        if not same_state(whole.state_dict(), parts.state_dict()):
            failures.append(f"{name}: running state differs after {STEPS} steps")
        if not failures and rank == 0:
            print(f"same: {name}", flush=True)
    for failure in failures:
        print(f"rank {rank}: {failure}", file=sys.stderr, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
