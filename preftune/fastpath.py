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
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from preftune.data.collate import Batch
from preftune.logps import chunked_token_logps, sequence_logps, token_logps_from_logits
from preftune.records import Logps

# Attention implementations that take a custom 4-D mask as given (transformers' masking_utils
# returns a 4-D mask unchanged; eager adds it as a bias, sdpa takes it as attn_mask).
BLOCK_MASK_ATTENTION = ("eager", "sdpa")
# Config attributes of models whose logits are not just lm_head(hidden) (soft-capping, scaling).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")


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


# --------------------------------------------------------------------------- layouts

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


# --------------------------------------------------------------------------- the model side

def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / DataParallel / DeepSpeed / torch.compile wrappers (a PeftModel stays a PeftModel)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or \
                type(model).__name__ == "DeepSpeedEngine":
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def core_model(model: nn.Module) -> nn.Module:
    """The transformers model itself: unwrapped, and the base model of a PeftModel."""
    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model: nn.Module) -> nn.Linear | None:
    """The lm-head when it is a plain nn.Linear the chunked path can apply itself (not, e.g., a
    LoRA-wrapped, quantised or FSDP-sharded head, nor one whose weight DeepSpeed ZeRO-3 has
    partitioned: those hold their whole weight only inside their own forward)."""
    core = core_model(model)
    head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
    partitioned = getattr(getattr(head, "weight", None), "ds_id", None) is not None
    return head if type(head) is nn.Linear and not partitioned else None


def sliding_window(config) -> int | None:
    """The attention window when some layer uses sliding-window attention; a block mask cannot
    express it, so block layouts are only used for batches that fit inside the window."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    return window if getattr(config, "use_sliding_window", True) else None


def run_model(model: nn.Module, layout: RowLayout, chunked: bool, chunk_tokens: int) -> Tensor:
    """Log-probs (N,) float32 of the layout's scored tokens, through `model` as called by the caller
    (so DDP's gradient hooks still see the forward).

    With `chunked`, a forward pre-hook on the lm-head keeps its input (the final hidden states) and
    hands the head an empty slice, so the model computes no logits; the scored positions' hidden
    states then go through `chunked_token_logps` with the head's own weight.
    """
    kwargs = dict(input_ids=layout.input_ids, use_cache=False)
    if layout.is_block:
        kwargs["attention_mask"] = block_attention_mask(layout, core_model(model).config._attn_implementation)
        kwargs["position_ids"] = layout.position_ids
    else:
        kwargs["attention_mask"] = layout.padding_mask
    if not chunked:
        logits = model(**kwargs).logits
        return token_logps_from_logits(logits.reshape(-1, logits.shape[-1])[layout.source], layout.targets)
    head = output_head(model)
    kept: list[Tensor] = []

    def keep_hidden(module, args):
        kept.append(args[0])
        return (args[0][..., :0, :],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(keep_hidden)
    try:
        model(**kwargs)
    finally:
        handle.remove()
    hidden = kept[-1]
    if hidden.shape[:-1] != layout.input_ids.shape:
        raise RuntimeError(f"the lm-head saw hidden states of shape {tuple(hidden.shape)}, expected "
                           f"{tuple(layout.input_ids.shape)} + (hidden,)")
    hidden = hidden.reshape(-1, hidden.shape[-1])[layout.source]
    return chunked_token_logps(hidden, head.weight, head.bias, layout.targets, chunk_tokens)


def to_logps(batch: Batch, layout: RowLayout, values: Tensor, token_level: bool) -> Logps:
    """Scatter scored-token values into the plain path's (B, K, T-1) layout and build its Logps."""
    b, k = batch.num_examples, batch.num_responses
    width = batch.input_ids.shape[1] - 1
    per_token = values.new_zeros(b * k * width).index_put((layout.dest,), values).view(b, k, width)
    mask = batch.response_mask[:, 1:].reshape(b, k, width)
    length = mask.sum(-1).to(per_token.dtype)
    if token_level:
        return Logps(sum=per_token.sum(-1), length=length, tokens=per_token, mask=mask)
    return Logps(sum=per_token.sum(-1), length=length)


# --------------------------------------------------------------------------- capabilities

@dataclass(frozen=True)
class Capabilities:
    """What a model was found to support; `reason` says why a fast path is off."""

    block_mask: bool
    chunked_head: bool
    hidden_size: int
    sliding_window: int | None = None
    reason: str = ""


_CAPABILITIES: "weakref.WeakKeyDictionary[nn.Module, Capabilities]" = weakref.WeakKeyDictionary()


def probe_batch(vocab_size: int) -> Batch:
    """Three examples with two responses each; the second and third share a packed row."""
    from preftune.data.collate import collate
    from preftune.data.tokenize import TokenizedExample

    generator = torch.Generator().manual_seed(1234)

    def ids(n):
        return torch.randint(0, min(vocab_size, 4096), (n,), generator=generator).tolist()

    examples = [TokenizedExample(ids(p), [ids(a), ids(b)], "pairwise") for p, a, b in ((5, 3, 4), (2, 1, 2), (2, 2, 2))]
    return collate(examples, pad_token_id=0)


def _probe(model: nn.Module, core: nn.Module) -> Capabilities:
    """Run the fast paths on a tiny batch and compare them with the plain path.

    The block mask must isolate exactly: the gradient of a packed response's log-probs with respect
    to the input embeddings must be exactly zero at every position it may not see (its sibling
    response, the other segment in its row) and non-zero on its prompt. A model that ignores or
    rewrites the 4-D mask fails this whatever its weights. Values must also match the plain path
    (1e-4 in float32, 0.1 in 16-bit weights, where two summation orders differ by more), which
    catches ignored position ids and logits that are not a plain lm-head output.
    """
    config = core.config
    hidden_size = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
    window = sliding_window(config)
    head = output_head(core)
    dtype = next(core.parameters()).dtype
    tolerance = 1e-4 if dtype == torch.float32 else 1e-1
    device = next(core.parameters()).device
    batch = probe_batch(int(getattr(config, "vocab_size", 0) or head.weight.shape[0])).to(device)
    reasons = []

    try:
        with torch.no_grad():
            expected = sequence_logps(model, batch, token_level=True).tokens
    except Exception as error:  # the plain path will raise it again, where the user sees it
        return Capabilities(False, False, hidden_size, window, f"plain forward failed: {type(error).__name__}: {error}")

    chunked = False
    if head is None:
        reasons.append("the lm-head is not a plain nn.Linear")
    elif any(getattr(config, name, None) not in (None, 1.0) for name in LOGIT_TRANSFORMS):
        reasons.append("the model transforms its logits after the lm-head")
    else:
        try:
            with torch.no_grad():
                layout = plain_layout(batch)
                got = to_logps(batch, layout, run_model(model, layout, True, 0), True).tokens
            chunked = bool((got - expected).abs().max() <= tolerance)
            if not chunked:
                reasons.append("chunked lm-head log-probs differ from the model's logits")
        except Exception as error:  # any failure means: do not use this path
            reasons.append(f"chunked lm-head failed: {type(error).__name__}: {error}")

    block = False
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in BLOCK_MASK_ATTENTION:
        reasons.append(f"attention implementation {implementation!r} does not take a 4-D block mask")
    else:
        try:
            block = _block_mask_is_honoured(model, core, batch, expected, chunked, tolerance)
            if not block:
                reasons.append("the model does not honour a 4-D block mask with restarted position ids")
        except Exception as error:
            reasons.append(f"block mask failed: {type(error).__name__}: {error}")
    return Capabilities(block, chunked, hidden_size, window, "; ".join(reasons))


def _block_mask_is_honoured(model, core, batch: Batch, expected: Tensor, chunked: bool, tolerance: float) -> bool:
    layout = block_layout(batch, share_prompt=True, pack=True)
    assert layout is not None and layout.input_ids.shape[0] == 2, "probe batch must pack into two rows"
    embedded: list[Tensor] = []

    def track(module, args, output):
        output = output.detach().requires_grad_()
        embedded.append(output)
        return output

    handle = core.get_input_embeddings().register_forward_hook(track)
    try:
        with torch.enable_grad():
            values = run_model(model, layout, chunked, 0)
    finally:
        handle.remove()
    got = to_logps(batch, layout, values.detach(), True).tokens
    if not bool((got - expected).abs().max() <= tolerance):
        return False
    # The last response in the second row, which holds two segments: without isolation it would
    # see its sibling response and the segment before it.
    row = 1
    last = int((layout.segment[row] >= 0).nonzero().max())
    segment, branch = layout.segment[row, last], layout.branch[row, last]
    plain_row = int(segment) * batch.num_responses + int(branch) - 1
    mine = layout.dest // (batch.input_ids.shape[1] - 1) == plain_row
    (grad,) = torch.autograd.grad(values[mine].sum(), embedded[0])
    reach = grad.abs().sum(-1) > 0
    may_see = (layout.segment == segment) & ((layout.branch == 0) | (layout.branch == branch))
    prompt = (layout.segment == segment) & (layout.branch == 0)
    return not bool((reach & ~may_see).any()) and bool(reach[prompt].any())


def capabilities(model: nn.Module) -> Capabilities:
    """What `model` supports, probed once per model and remembered while it lives."""
    core = core_model(model)
    found = _CAPABILITIES.get(core)
    if found is None:
        modes = {module: module.training for module in core.modules()}
        core.eval()  # no dropout: the probe compares two computations of the same values
        try:
            found = _probe(unwrap(model), core)
        finally:
            for module, training in modes.items():
                module.training = training
        _CAPABILITIES[core] = found
    return found


# --------------------------------------------------------------------------- choosing

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
