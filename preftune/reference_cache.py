"""Reference log-probs computed once, stored beside the run, and reused by later runs.

A live reference costs a second model in memory and an extra forward per step. The reference is
fixed during offline training, so its log-probs are a function of the example alone: one pass
before training computes them for every example the run will use, and training looks them up by
example id. No reference model is held while training.

The cache file's name is a key over everything that changes the numbers: the tokenized examples
(their ids, which already reflect the tokenizer, chat template and truncation settings), every
parameter and buffer of the reference (so its dtype too), and the training precision (bf16
autocast gives other values than fp32). A run with the same key reuses the file; a changed model
or data gives another key, so a stale cache is never read. Values are stored per example id (the
index into the prepared training examples, then the held-out ones), which is what the
deterministic batch plan (train/plan.py) hands every process, so DDP needs nothing special.

Pointwise data is excluded: KTO's second response is the next example's completion in the same
batch, so its reference value depends on how batches are formed, not on the example alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from preftune.data.collate import Batch, collate
from preftune.data.tokenize import TokenizedExample
from preftune.records import Logps

FORMAT_VERSION = 1
MODES = ("auto", "on", "off")


def cache_applies(mode: str | bool, needs_reference: bool, data_kind: str) -> bool:
    """Whether to serve the reference from the cache.

    auto: whenever the objective needs a reference and the data is not pointwise; on (or True): the
    same, but pointwise data is an error instead of a silent live reference; off (or False): never.
    """
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in MODES:
        raise ValueError(f"speed.reference_cache must be one of {MODES}, got {mode!r}")
    if mode == "off" or not needs_reference:
        return False
    if data_kind == "pointwise":
        if mode == "on":
            raise ValueError("speed.reference_cache: on cannot serve pointwise data: KTO's mismatched "
                             "completion depends on the batch, not on the example; use auto or off")
        return False
    return True


# --------------------------------------------------------------------------- fingerprints

def data_fingerprint(examples: list[TokenizedExample]) -> str:
    """sha256 over the token ids of every example, in order."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.kind.encode())
        digest.update(np.asarray(example.prompt_ids, dtype=np.int64).tobytes())
        for response in example.response_ids:
            digest.update(b"|")
            digest.update(np.asarray(response, dtype=np.int64).tobytes())
        digest.update(b";")
    return digest.hexdigest()


def weights_fingerprint(model: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every parameter and buffer (`skip` leaves
    some out, e.g. LoRA adapters for the adapter-disabled reference)."""
    digest = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    for name in sorted(tensors):
        if skip(name):
            continue
        tensor = tensors[name].detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_fingerprint(reference) -> str:
    """Fingerprint of the weights a `models.Reference` computes with."""
    if reference.kind == "lora-disabled":
        from preftune.fastpath import core_model

        return weights_fingerprint(core_model(reference.policy), skip=lambda name: "lora_" in name)
    return weights_fingerprint(reference.frozen)


def cache_key(data: str, weights: str, precision: str) -> str:
    fields = {"format": FORMAT_VERSION, "data": data, "weights": weights, "precision": precision}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- the table

@dataclass
class ReferenceLogpsCache:
    """Reference log-probs of a set of examples, looked up by example id.

    Examples may have different numbers of responses (listwise data), so values are kept per
    response, flat, in example order: ids (n,) example ids; responses (n,) how many responses each
    has; sums, lengths (total responses,); tokens: the per-token values of every response token,
    response after response (`lengths` says how many each has; this is the order in which
    `masked_scatter` fills a batch's response mask), or None when only sums were computed.
    """

    ids: Tensor
    responses: Tensor
    sums: Tensor
    lengths: Tensor
    tokens: Tensor | None = None

    def __post_init__(self) -> None:
        self.row_of = {int(i): r for r, i in enumerate(self.ids.tolist())}
        self.response_counts = self.responses.tolist()
        self.first_response = (self.responses.cumsum(0) - self.responses).tolist()
        self.token_counts = self.lengths.long().tolist()
        self.first_token = (self.lengths.long().cumsum(0) - self.lengths.long()).tolist()

    @classmethod
    def empty(cls, token_level: bool) -> "ReferenceLogpsCache":
        none = torch.zeros(0, dtype=torch.long)
        return cls(none, none, torch.zeros(0), torch.zeros(0), torch.zeros(0) if token_level else None)

    @property
    def has_tokens(self) -> bool:
        return self.tokens is not None

    def __len__(self) -> int:
        return len(self.ids)

    def _flat_responses(self, rows: list[int]) -> list[int]:
        return [self.first_response[r] + j for r in rows for j in range(self.response_counts[r])]

    def _token_values(self, flat: list[int]) -> Tensor:
        pieces = [self.tokens[self.first_token[f]:self.first_token[f] + self.token_counts[f]] for f in flat]
        return torch.cat(pieces) if pieces else torch.zeros(0)

    def lookup(self, batch: Batch, token_level: bool = False) -> Logps:
        """The reference Logps of `batch`, as a live reference would compute them."""
        if batch.example_ids is None:
            raise ValueError("the reference cache needs batches collated with example_ids")
        b, k = batch.num_examples, batch.num_responses
        rows = [self.row_of[int(i)] for i in batch.example_ids.tolist()]
        if any(self.response_counts[r] != k for r in rows):
            raise RuntimeError("the cached reference values belong to other examples than this batch")
        flat = self._flat_responses(rows)
        device = batch.input_ids.device
        sums, lengths = self.sums[flat].view(b, k).to(device), self.lengths[flat].view(b, k).to(device)
        mask = batch.response_mask[:, 1:].reshape(b, k, -1)
        if not torch.equal(mask.sum(-1).to(lengths.dtype), lengths):
            raise RuntimeError("the cached reference values belong to other response lengths than this batch")
        if not token_level:
            return Logps(sum=sums, length=lengths)
        if not self.has_tokens:
            raise RuntimeError("this reference cache holds no per-token values")
        values = self._token_values(flat).to(device)
        tokens = torch.zeros(mask.shape, dtype=values.dtype, device=device).masked_scatter(mask, values)
        return Logps(sum=sums, length=lengths, tokens=tokens, mask=mask)

    def rows(self, rows: list[int]) -> "ReferenceLogpsCache":
        """A table of some of this table's examples."""
        flat = self._flat_responses(rows)
        return ReferenceLogpsCache(self.ids[rows], self.responses[rows], self.sums[flat], self.lengths[flat],
                                   self._token_values(flat) if self.has_tokens else None)

    def merged(self, other: "ReferenceLogpsCache") -> "ReferenceLogpsCache":
        """This table plus the examples of `other` it lacks."""
        return concat([self, other.rows([r for r, i in enumerate(other.ids.tolist()) if int(i) not in self.row_of])])

    def save(self, path: Path, meta: dict) -> None:
        """Write atomically (a temporary file renamed), so concurrent runs never read half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"format": FORMAT_VERSION, "meta": meta, "ids": self.ids, "responses": self.responses,
                    "sums": self.sums, "lengths": self.lengths, "tokens": self.tokens}, temporary)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> "ReferenceLogpsCache | None":
        if not path.exists():
            return None
        stored = torch.load(path, weights_only=True)
        if stored.get("format") != FORMAT_VERSION:
            return None
        return cls(stored["ids"], stored["responses"], stored["sums"], stored["lengths"], stored["tokens"])


def concat(tables: list[ReferenceLogpsCache]) -> ReferenceLogpsCache:
    """One table of several holding different examples (per-token values only if all have them)."""
    with_tokens = all(t.has_tokens for t in tables)
    return ReferenceLogpsCache(torch.cat([t.ids for t in tables]), torch.cat([t.responses for t in tables]),
                               torch.cat([t.sums for t in tables]), torch.cat([t.lengths for t in tables]),
                               torch.cat([t.tokens for t in tables]) if with_tokens else None)


def compute_reference_logps(model: nn.Module, examples: list[TokenizedExample], ids: list[int], pad_token_id: int,
                            batch_size: int, token_level: bool, logps_fn: Callable, device,
                            autocast=None, progress: bool = False,
                            save_partial: Callable[[ReferenceLogpsCache], None] | None = None,
                            save_every: float = 60.0) -> ReferenceLogpsCache:
    """One no-grad pass of `model` over `examples[i]` for i in `ids`, in eval mode.

    Batches hold examples with the same number of responses, sorted by length so that little
    padding is computed. `logps_fn(model, batch, token_level)` is the log-prob path to use.
    save_partial(table so far) is called at most every `save_every` seconds (0: after every
    batch), so that a pass that dies leaves what it computed for the next run.
    """
    by_size: dict[int, list[int]] = {}
    for i in ids:
        by_size.setdefault(len(examples[i].response_ids), []).append(i)
    batches = []
    for size in sorted(by_size):
        members = sorted(by_size[size], key=lambda i: len(examples[i].prompt_ids) + max(map(len, examples[i].response_ids)))
        batches += [members[start:start + batch_size] for start in range(0, len(members), batch_size)]
    parts = [ReferenceLogpsCache.empty(token_level)]
    modes = {module: module.training for module in model.modules()}
    model.eval()  # a reference never runs dropout
    saved = time.monotonic()
    try:
        for number, chosen in enumerate(tqdm(batches, disable=not progress, desc="reference log-probs",
                                             dynamic_ncols=True)):
            if save_partial is not None and number and time.monotonic() - saved >= save_every:
                save_partial(concat(parts))
                saved = time.monotonic()
            batch = collate([examples[i] for i in chosen], pad_token_id, example_ids=chosen).to(device)
            with torch.no_grad(), (autocast() if autocast is not None else contextlib.nullcontext()):
                logps = logps_fn(model, batch, token_level)
            parts.append(ReferenceLogpsCache(
                torch.tensor(chosen), torch.full((len(chosen),), batch.num_responses), logps.sum.float().flatten().cpu(),
                logps.length.float().flatten().cpu(), logps.tokens[logps.mask].float().cpu() if token_level else None))
        if save_partial is not None and len(parts) > 1:
            save_partial(concat(parts))  # the whole share: kept even if gathering the shares never happens
    finally:
        for module, training in modes.items():
            module.training = training
    return concat(parts)


def prepare_reference_cache(reference, examples: list[TokenizedExample], needed: list[int], *, cache_dir: Path,
                            precision: str, token_level: bool, pad_token_id: int, batch_size: int,
                            logps_fn: Callable, accelerator, progress: bool = False,
                            save_every: float = 60.0) -> tuple[ReferenceLogpsCache, dict]:
    """Load the cache for (examples, reference weights, precision), computing what it lacks.

    Each process computes a share of the missing examples and saves what it has so far every
    `save_every` seconds in a part file beside the cache; the shares are gathered once, so that
    every process holds the whole table, and the main process writes the file. A pass that dies
    (a killed process, a lost machine) leaves its part files, which the next run merges in and
    does not compute again. Returns the table and a summary for train_summary.json.
    """
    key = cache_key(data_fingerprint(examples), reference_fingerprint(reference), precision)
    path = Path(cache_dir) / f"{key}.pt"
    meta = {"examples": len(examples), "precision": precision, "token_level": token_level}
    # The main process reads the file, with what an interrupted pass left, and every process takes
    # its copy, so all agree on what is missing.
    table = load_with_parts(path, meta) if accelerator.is_main_process else None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        table = broadcast_object_list([table])[0]
    if table is not None and not (table.has_tokens or not token_level):
        table = None  # per-token values are needed now: recompute everything once, with them
    missing = [i for i in needed if table is None or i not in table.row_of]
    summary = {"path": str(path), "reused": len(needed) - len(missing), "computed": len(missing)}
    if not missing:
        return table, summary
    # Each process computes its share and keeps what it has in a part file of its own as it goes;
    # the shares are gathered once at the end.
    share = missing[accelerator.process_index::accelerator.num_processes]
    part = part_path(path, accelerator.process_index)
    with reference.model(accelerator.unwrap_model) as model:
        computed = compute_reference_logps(model, examples, share, pad_token_id, batch_size, token_level, logps_fn,
                                           accelerator.device, accelerator.autocast, progress,
                                           save_partial=lambda done: done.save(part, meta), save_every=save_every)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        computed = concat(gather_object([computed]))
    table = computed if table is None else table.merged(computed)
    if accelerator.is_main_process:
        table.save(path, meta)
    accelerator.wait_for_everyone()
    part.unlink(missing_ok=True)  # everything in it is in the table now
    return table, summary


def part_path(path: Path, rank: int) -> Path:
    """Where process `rank` keeps the values it has computed so far (beside the cache file)."""
    return path.with_name(f"{path.stem}.part-{rank}-{os.getpid()}.pt")


def load_with_parts(path: Path, meta: dict) -> "ReferenceLogpsCache | None":
    """The cache file merged with the part files an interrupted pass left beside it (any number of
    processes, any run). The merge is written back and the parts removed, so they are read once."""
    table = ReferenceLogpsCache.load(path)
    parts = sorted(path.parent.glob(f"{path.stem}.part-*.pt"))
    for part in parts:
        found = ReferenceLogpsCache.load(part)
        if found is not None and (table is None or found.has_tokens == table.has_tokens):
            table = found if table is None else table.merged(found)
    if parts and table is not None:
        table.save(path, meta)
    for part in parts:
        part.unlink(missing_ok=True)
    return table
