"""`preftune` under accelerate's FSDP or DeepSpeed on CPU processes, for tests/test_distributed.py only.

accelerate 1.16 turns `distributed_type: FSDP` or `DEEPSPEED` into that engine only on accelerator
devices: on a CPU group (gloo) it quietly runs plain data parallelism (accelerate/state.py picks
FSDP for the multi-GPU-like types only, and DeepSpeed only when not on the CPU). torch's FSDP2
(`fully_shard`) and DeepSpeed's CPU accelerator both run on CPU with gloo. So this script marks
the CPU group as FSDP or DeepSpeed once accelerate has built the engine's plugin from the
launcher's config, as accelerate itself does on GPUs, and then runs the ordinary `preftune`
command line. Everything after that (accelerate's preparation, clipping, state-dict gathering,
sharded checkpoints) is the code a GPU run takes.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/engine_on_cpu.py train ...
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise look for a GPU

from accelerate import state as accelerate_state  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

_original_init = accelerate_state.AcceleratorState.__init__


def _engine_on_cpu(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs.get("fsdp_plugin")
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        plugin = kwargs.get("deepspeed_plugin")
        self.distributed_type = DistributedType.DEEPSPEED
        plugin.set_mixed_precision(self._mixed_precision)
        plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = plugin
    accelerate_state.PartialState._shared_state["distributed_type"] = self.distributed_type


accelerate_state.AcceleratorState.__init__ = _engine_on_cpu

if __name__ == "__main__":
    from preftune.cli import main

    code = main(sys.argv[1:])
    import torch.distributed as dist

    # preftune's command line leaves the group itself: a gloo group left to the interpreter's teardown
    # can abort a finished process (cli._leave_process_group)
    if dist.is_initialized():
        sys.exit("preftune returned with its process group still alive")
    sys.exit(code)
