"""What the loops need from the process group that `accelerate launch` or `torchrun` set up.

preftune never launches processes itself: a launcher starts W copies of the same command and
accelerate forms the group (DDP, FSDP, DeepSpeed; gloo on CPU). This module holds the few places
where the loops meet that group:

- `check_process_count`: a launcher that asked for N processes but started one (on a machine
  without GPUs `accelerate launch --num_processes N` runs one process unless told `--multi_gpu`)
  is reported instead of silently training on 1/N of the intended global batch;
- `cross_process_ops`: sums and gathers over processes for the objective's batch statistics
  (BCO's shift, beta-DPO's margins, KTO's reference point), so methods stay pure functions and
  never import torch.distributed (methods/state.py);
- `load_models_whole` and `configure_engine`: between them the loop loads its models whole, even
  under DeepSpeed ZeRO-3 (the frozen reference and the reference-cache pass run outside the
  engine and need real weights); then DeepSpeed gets the settings it would otherwise read from a
  data loader the loop does not use (micro-batch size, clipping), and partitions the policy in
  `prepare`;
- `gathered`, `from_main`, `summed`, `average_gradients`: the online loop's exchanges (each process
  samples and judges its share, the rows are gathered once, the main process evaluates, the
  gradients are averaged before every step; train/online*.py).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from preftune.methods.state import CrossProcess

SCALING_DOC = "docs/scaling.md"


def requested_processes(environ=os.environ, parent_cmdline: list[str] | None = None) -> int | None:
    """How many processes the launcher of this process asked for, or None when it did not say.

    torchrun and `accelerate launch --multi_gpu` (and the DeepSpeed launcher) export WORLD_SIZE.
    accelerate's single-process launcher exports no size, but it sets MASTER_ADDR only when it was
    asked for several processes or machines; the number then comes from its command line
    (`--num_processes N`), or is reported as 2 ("several") when that cannot be read.
    """
    if environ.get("WORLD_SIZE"):
        return int(environ["WORLD_SIZE"])
    if "ACCELERATE_MIXED_PRECISION" in environ and "MASTER_ADDR" in environ:
        args = parent_cmdline if parent_cmdline is not None else _parent_cmdline()
        for i, arg in enumerate(args):
            match = re.fullmatch(r"--num[_-]processes(?:=(\d+))?", arg)
            if match and (match.group(1) or (i + 1 < len(args) and args[i + 1].isdigit())):
                return int(match.group(1) or args[i + 1])
        return 2
    return None


def _parent_cmdline() -> list[str]:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_text().split("\0")
    except OSError:  # not Linux, or the parent is gone
        return []


def process_count_message(requested: int | None, found: int) -> str | None:
    """The warning for a launcher that asked for more processes than the run has (None if all is well)."""
    if requested is None or requested <= found:
        return None
    return (f"preftune: warning: the launcher asked for {requested} processes but this run has {found}. "
            "On a machine without GPUs `accelerate launch` starts one process unless given --multi_gpu: use "
            f"`accelerate launch --multi_gpu --num_processes {requested} -m preftune ...` or "
            f"`torchrun --nproc_per_node {requested} -m preftune ...` ({SCALING_DOC}).")


def check_process_count(accelerator) -> None:
    """Say so (on stderr, once) when the launcher asked for more processes than accelerate formed."""
    message = process_count_message(requested_processes(), accelerator.num_processes)
    if message and accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)


def cross_process_ops(accelerator) -> CrossProcess:
    """Sums and gathers over the run's processes (identity with one process)."""
    if accelerator.num_processes == 1:
        return CrossProcess()

    def total(values: Tensor) -> Tensor:
        return accelerator.reduce(values.contiguous(), reduction="sum")

    def gather(values: Tensor) -> Tensor:
        return accelerator.gather(values.contiguous())

    return CrossProcess(total, gather, accelerator.process_index, accelerator.num_processes)


def _deepspeed_plugin(accelerator):
    return getattr(accelerator.state, "deepspeed_plugin", None)


def load_models_whole(accelerator) -> None:
    """Until `configure_engine`, transformers loads models whole even under ZeRO-3.

    accelerate registers its DeepSpeed config with transformers whatever `zero3_init_flag` says,
    and under stage 3 `from_pretrained` then loads every model straight into partitions, the
    frozen reference too, which cannot run outside the engine. The config is withdrawn while the
    loop loads its models and given back before `prepare`.
    """
    plugin = _deepspeed_plugin(accelerator)
    if plugin is not None and plugin.hf_ds_config.is_zero3():
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def configure_engine(accelerator, micro_batch_size: int, grad_accum: int, max_grad_norm: float) -> None:
    """Give DeepSpeed what it would otherwise read from a prepared data loader (the loop plans its
    own batches) and the recipe's clipping; values the user's DeepSpeed config sets are kept.
    accelerate fills the rest (`train_batch_size`) in `prepare`. Nothing to do for DDP and FSDP."""
    plugin = _deepspeed_plugin(accelerator)
    if plugin is None:
        return
    plugin.set_deepspeed_weakref()  # undo load_models_whole: transformers sees the engine again
    config = plugin.deepspeed_config
    for key, value in (("train_micro_batch_size_per_gpu", micro_batch_size),
                       ("gradient_accumulation_steps", grad_accum),
                       ("gradient_clipping", float(max_grad_norm) if max_grad_norm and max_grad_norm > 0 else 0.0)):
        if config.get(key, "auto") == "auto":
            config[key] = value


# ----------------------------------------------------------------------------- the online loop's exchanges

def gathered(accelerator, value) -> list:
    """Every process's `value` (any picklable object), in rank order: one exchange."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def from_main(accelerator, value):
    """The main process's `value` on every process (others may pass None)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def summed(dicts: list[dict]) -> dict:
    """Key-wise sums of numeric values (counters kept by each process)."""
    total: dict = {}
    for values in dicts:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def average_gradients(parameters, accelerator) -> None:
    """Average the gradients of `parameters` over processes, in one all-reduce of their concatenation.

    The online loop keeps its model unwrapped (its snapshots, anchors and fast/slow adapters swap
    weights in place, and it samples from the model), so it averages gradients itself before
    clipping and stepping; every process then takes the same step and the weights stay equal.
    Every process must have gradients for the same parameters (the same graph on other data).
    """
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()
