"""What a model can take, decided once per model by a probe on a tiny batch: a 4-D block mask
(honoured exactly), restarted position ids, and a plain linear head over its last hidden state."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from preftune.data.collate import Batch
from preftune.fastpath.forward import core_model, output_head, run_model, sliding_window, to_logps, unwrap
from preftune.fastpath.layout import block_layout, plain_layout
from preftune.logps import sequence_logps

# Attention implementations that take a custom 4-D mask as given (transformers' masking_utils
# returns a 4-D mask unchanged; eager adds it as a bias, sdpa takes it as attn_mask).
BLOCK_MASK_ATTENTION = ("eager", "sdpa")
# Config attributes of models whose logits are not just lm_head(hidden) (soft-capping, scaling).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")



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
