"""Row layouts: how a batch's tokens are laid out in the rows a model runs on (the batch's own rows,
or segments of a prompt and its responses, packed several to a row) and the block attention mask
that gives every response token exactly the context it has in the plain layout."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.data.collate import Batch


@dataclass
class RowLayout:
    """How a batch's tokens are laid out in the rows the model runs on, and where each scored token's
    log-prob comes from and goes to.

    input_ids: (R, S). position_ids: (R, S), or None for 0..S-1 in every row (the plain layout).
    padding_mask: (R, S) 2-D mask of the plain layout; None for block layouts, whose masks come
    from `segment` ((R, S) segment index, -1 on padding) and `branch` ((R, S) 0 on a prompt, k+1 on
    response k, -1 on padding).
    source: (N,) flat index into R*S of the position whose output predicts each scored token.
    targets: (N,) the scored token ids. dest: (N,) flat index of each scored token in the plain
    path's (B*K, T-1) per-token layout, so results come back in exactly that layout.
    """

    input_ids: Tensor
    position_ids: Tensor | None
    padding_mask: Tensor | None
    segment: Tensor | None
    branch: Tensor | None
    source: Tensor
    targets: Tensor
    dest: Tensor

    @property
    def is_block(self) -> bool:
        return self.segment is not None

    def cost(self, hidden_size: int) -> float:
        return estimated_cost(*self.input_ids.shape, hidden_size)


def estimated_cost(rows: int, width: int, hidden_size: int) -> float:
    """Forward cost of rows x width tokens in token-units: rows * S * (1 + S / (6 d)).

    Per token and layer the projections and MLP cost about 24 d^2 FLOPs and attention over a
    (dense, masked) row of S keys about 4 S d, hence the S / (6 d) term: a longer row is not free
    even when it holds fewer tokens. (The lm-head runs on the scored tokens alone in every layout.)
    """
    return rows * width * (1.0 + width / (6.0 * hidden_size))


def plain_layout(batch: Batch) -> RowLayout:
    """The batch's own rows: token j+1 of a row is scored from position j when it is a response token."""
    ids = batch.input_ids
    width = ids.shape[1]
    rows, cols = batch.response_mask[:, 1:].nonzero(as_tuple=True)
    return RowLayout(ids, None, batch.attention_mask, None, None, source=rows * width + cols,
                     targets=ids[rows, cols + 1], dest=rows * (width - 1) + cols)


@dataclass
class _Segment:
    """One prompt and the responses that follow it in a block layout (offsets are within the segment)."""

    tokens: Tensor
    positions: Tensor
    branch: Tensor
    source: Tensor
    targets: Tensor
    dest: Tensor


def _segments(batch: Batch, share_prompt: bool) -> list[_Segment] | None:
    """Split the batch into segments: one per example (shared prompt) or one per row.

    Returns None when the batch is not laid out as prompt-then-response rows with the same prompt
    in all K rows of an example (the block layouts rely on both).
    """
    k = batch.num_responses
    ids, responses, real = batch.input_ids.cpu(), batch.response_mask.cpu(), batch.attention_mask.cpu().bool()
    width = ids.shape[1]
    prompt_len = (real & ~responses).sum(1).tolist()
    response_len = responses.sum(1).tolist()
    groups = [list(range(b * k, (b + 1) * k)) for b in range(batch.num_examples)] if share_prompt \
        else [[row] for row in range(ids.shape[0])]
    segments = []
    for rows in groups:
        first = rows[0]
        prompt = ids[first, :prompt_len[first]]
        pieces, positions, branches, sources, targets, dests = [prompt], [], [], [], [], []
        p = len(prompt)
        positions.append(torch.arange(p))
        branches.append(torch.zeros(p, dtype=torch.long))
        offset = p
        for branch, row in enumerate(rows, start=1):
            n = response_len[row]
            if prompt_len[row] != p or not torch.equal(ids[row, :p], prompt) \
                    or not bool(responses[row, p:p + n].all()) \
                    or not bool(real[row, :p + n].all()):
                return None
            pieces.append(ids[row, p:p + n])
            positions.append(torch.arange(p, p + n))
            branches.append(torch.full((n,), branch, dtype=torch.long))
            # Response token j is predicted by response token j-1, the first one by the prompt's last.
            j = torch.arange(n)
            source = offset + j - 1
            source[:1] = p - 1
            keep = (p + j) >= 1  # with an empty prompt the plain path cannot score a row's first token
            sources.append(source[keep])
            targets.append(ids[row, p:p + n][keep])
            dests.append(row * (width - 1) + p + j[keep] - 1)
            offset += n
        segments.append(_Segment(torch.cat(pieces), torch.cat(positions), torch.cat(branches),
                                 torch.cat(sources), torch.cat(targets), torch.cat(dests)))
    return segments


def segment_lengths(batch: Batch, share_prompt: bool) -> list[int]:
    """Token count of each segment a block layout would have (cheap: from the masks alone)."""
    real = batch.attention_mask.bool().cpu()
    row_lengths = real.sum(1)
    if not share_prompt:
        return row_lengths.tolist()
    k = batch.num_responses
    responses = batch.response_mask.cpu().sum(1).view(-1, k)
    prompts = (row_lengths.view(-1, k)[:, 0] - responses[:, 0])
    return (prompts + responses.sum(1)).tolist()


def arrange(lengths: list[int], pack: bool) -> tuple[list[list[int]], int]:
    """Segments per row and the row width: one segment per row, or packed first-fit decreasing into
    rows no longer than the longest segment (so packing never lengthens rows)."""
    rows = _pack(lengths, max(lengths)) if pack else [[i] for i in range(len(lengths))]
    return rows, max(sum(lengths[i] for i in row) for row in rows)


def _pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: segment indices per row, each row at most `capacity` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[index] <= free:
                rows[r].append(index)
                room[r] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def block_layout(batch: Batch, share_prompt: bool, pack: bool) -> RowLayout | None:
    """Segments (per example with `share_prompt`, else per row) placed in rows, several per row with
    `pack`. None when the batch cannot be split into segments (see `_segments`)."""
    segments = _segments(batch, share_prompt)
    if segments is None:
        return None
    lengths = [len(s.tokens) for s in segments]
    rows, width = arrange(lengths, pack)
    shape = (len(rows), width)
    input_ids = torch.zeros(shape, dtype=torch.long)  # id 0 on padding: never attended, never scored
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    branch_ids = torch.full(shape, -1, dtype=torch.long)
    sources, targets, dests = [], [], []
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            seg, end = segments[index], start + lengths[index]
            input_ids[r, start:end] = seg.tokens
            position_ids[r, start:end] = seg.positions
            segment_ids[r, start:end] = index
            branch_ids[r, start:end] = seg.branch
            sources.append(r * width + start + seg.source)
            targets.append(seg.targets)
            dests.append(seg.dest)
            start = end
    device = batch.input_ids.device
    return RowLayout(input_ids.to(device), position_ids.to(device), None, segment_ids.to(device),
                     branch_ids.to(device), torch.cat(sources).to(device), torch.cat(targets).to(device),
                     torch.cat(dests).to(device))


def block_attention_mask(layout: RowLayout, attn_implementation: str) -> Tensor:
    """(R, 1, S, S) mask of a block layout: causal, within one segment, and a response sees the
    prompt (branch 0) and its own branch only. Every position also sees itself, so padding rows
    are never fully masked (a fully masked softmax row is NaN in some kernels).

    sdpa takes a bool mask (True = attend); eager adds the mask to the scores, so it gets 0 / -inf
    (the float32 minimum, which exp() turns into an exact 0).
    """
    seg, branch = layout.segment, layout.branch
    width = seg.shape[1]
    index = torch.arange(width, device=seg.device)
    # Built in place: at most two (R, S, S) tensors exist at once.
    allowed = seg[:, :, None] == seg[:, None, :]
    allowed &= (seg >= 0)[:, :, None]
    visible = branch[:, :, None] == branch[:, None, :]
    visible |= (branch == 0)[:, None, :]
    allowed &= visible
    del visible
    allowed &= index[:, None] >= index[None, :]
    allowed |= torch.eye(width, dtype=torch.bool, device=seg.device)
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=seg.device)
    return bias.masked_fill_(~allowed, torch.finfo(torch.float32).min)
