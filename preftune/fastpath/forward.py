"""The model side of the fast paths: run a model on a row layout (block mask, restarted positions)
and turn the scored positions into `Logps`, with the lm-head and log-softmax in chunks when allowed."""
from __future__ import annotations

from torch import Tensor, nn

from preftune.data.collate import Batch
from preftune.fastpath.layout import RowLayout, block_attention_mask
from preftune.logps import chunked_token_logps, token_logps_from_logits
from preftune.records import Logps


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
