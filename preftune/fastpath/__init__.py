"""Fast log-probs: the prompt once per example, several examples per row, the lm-head in chunks.

`logps.sequence_logps` (the plain path) runs B*K right-padded rows, so each prompt goes through the
model K times, and it materialises (B*K, T, V) logits although only response tokens are scored.
This module computes the same `Logps` with three savings, each usable on its own:

* Prompt sharing: one segment per example, [prompt, response_0, ..., response_{K-1}]. Each
  response's position ids restart right after the prompt, and a block attention mask lets a
  response token see the prompt and the earlier tokens of its own response only, i.e. exactly the
  context it has in the plain layout. The prompt is computed once instead of K times.
* Packing (padding-free rows): several segments share a row under a block-diagonal mask. Rows are
  filled up to the longest segment's length, so they never get longer, they only hold less padding.
* Chunked head: the lm-head and log-softmax run only on the scored positions, a few hundred
  tokens at a time (`logps.chunked_token_logps`), so no (rows, T, V) logits exist at any time.

A model takes a fast path only where a one-time probe (`capabilities`) shows it honours the
block mask and position ids and that its logits are a plain linear map of its last hidden state;
otherwise, and for batches where the block layout would cost more (`estimated_cost`), the plain
concatenated batch is used. Every path returns the values of the plain path: the tests in
tests/test_fastpath.py compare sums, per-token values and gradients to 1e-5 in float32.

The package: layout.py (row layouts and the block mask), forward.py (running a model on a layout),
probe.py (what a model can take); here, the choice of a layout per batch and `batch_logps`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from preftune.data.collate import Batch
from preftune.fastpath.forward import core_model, output_head, run_model, sliding_window, to_logps, unwrap
from preftune.fastpath.layout import (RowLayout, arrange, block_attention_mask, block_layout, estimated_cost,
                                      plain_layout, segment_lengths)
from preftune.fastpath.probe import BLOCK_MASK_ATTENTION, LOGIT_TRANSFORMS, Capabilities, capabilities, probe_batch
from preftune.logps import sequence_logps
from preftune.records import Logps

__all__ = ["BLOCK_MASK_ATTENTION", "LOGIT_TRANSFORMS", "Capabilities", "FastPathOptions", "RowLayout", "arrange",
           "batch_logps", "block_attention_mask", "block_layout", "capabilities", "choose_layout", "core_model",
           "estimated_cost", "output_head", "plain_layout", "probe_batch", "run_model", "segment_lengths",
           "sliding_window", "to_logps", "unwrap"]


@dataclass(frozen=True)
class FastPathOptions:
    """Which fast paths may be used (each still only where the model supports it).

    prompt_sharing: prompt once per example with its K responses under a block mask.
    packing: several examples per row where that saves rows.
    chunked_head: lm-head and log-softmax on scored tokens only, in chunks of `chunk_tokens`
    (0: as many as fit ~32 MiB of float32 logits).
    """

    prompt_sharing: bool = True
    packing: bool = True
    chunked_head: bool = True
    chunk_tokens: int = 0

    @classmethod
    def from_config(cls, speed) -> "FastPathOptions":
        """From config.SpeedConfig (or None for the defaults)."""
        if speed is None:
            return cls()
        return cls(speed.prompt_sharing, speed.packing, speed.chunked_logps, speed.logits_chunk_tokens)



def choose_layout(batch: Batch, options: FastPathOptions, caps: Capabilities) -> RowLayout | None:
    """The cheapest layout the options and the model allow, or None for the plain path with full
    logits. Block layouts compete on `estimated_cost` with the batch's own rows; only the winner
    is built."""
    plain = plain_layout(batch) if options.chunked_head and caps.chunked_head else None
    if not caps.block_mask or not (options.prompt_sharing or options.packing):
        return plain
    if caps.sliding_window is not None and batch.input_ids.shape[1] > caps.sliding_window:
        return plain
    shapes = [(True, options.packing)] if options.prompt_sharing else []
    if options.packing:
        shapes.append((False, True))
    candidates = []
    for share, pack in shapes:
        rows, width = arrange(segment_lengths(batch, share), pack)
        candidates.append((estimated_cost(len(rows), width, caps.hidden_size), share, pack))
    plain_cost = estimated_cost(*batch.input_ids.shape, caps.hidden_size)
    for cost, share, pack in sorted(candidates):
        if cost >= plain_cost:
            break
        layout = block_layout(batch, share, pack)
        if layout is not None:  # None: the rows do not share their prompt as collate lays it out
            return layout
    return plain


def batch_logps(model: nn.Module, batch: Batch, token_level: bool = False,
                options: FastPathOptions | None = None) -> Logps:
    """`sequence_logps` with the fast paths `options` allows and `model` supports (defaults: all).

    Same values, per-token layout and gradients as the plain path; see the module docstring.
    """
    options = FastPathOptions() if options is None else options
    if not (options.prompt_sharing or options.packing or options.chunked_head):
        return sequence_logps(model, batch, token_level)
    caps = capabilities(model)
    layout = choose_layout(batch, options, caps)
    if layout is None:
        return sequence_logps(model, batch, token_level)
    chunked = options.chunked_head and caps.chunked_head
    return to_logps(batch, layout, run_model(model, layout, chunked, options.chunk_tokens), token_level)
