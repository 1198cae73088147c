"""Linear separability of chosen vs rejected hidden states: the probe of "More is Less" (offline.md §17).

Wang et al. (2025, arXiv 2504.02193) find that preference data whose chosen and rejected
responses are easy to tell apart by a linear probe on the model's hidden states lets DPO fit
superficial cues: training reward saturates fast while safety gets worse. Their repository has no
probe code, so the protocol below is our reconstruction of the paper's description (each choice
is an option):

1. run the (pre-DPO) model on prompt + response for every chosen and rejected response;
2. take the hidden state of layer ℓ (default: the last) at the last response token (default) or
   the mean over response tokens;
3. label chosen 1 and rejected 0, and split the pairs into k folds (default 5) so that a pair's
   two responses always fall in the same fold (a probe never sees the other half of a test pair);
4. standardise the features on the training folds and fit an L2-regularised logistic regression;
5. report held-out accuracy and AUC per layer, and the Fisher ratio along the probe direction.

Accuracy near 1.0 flags shortcut-prone data; near 0.5 means the pairs differ in no linearly
visible way.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample


# --------------------------------------------------------------------------- the probe itself

def pair_folds(num_pairs: int, folds: int = 5, seed: int = 0) -> Tensor:
    """Fold index of every pair (a random, balanced assignment); both responses of pair i use fold[i]."""
    if folds < 2 or folds > num_pairs:
        raise ValueError(f"need 2 <= folds <= number of pairs, got folds={folds} for {num_pairs} pairs")
    order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed))
    fold = torch.empty(num_pairs, dtype=torch.long)
    fold[order] = torch.arange(num_pairs) % folds
    return fold


def fit_logistic(features: Tensor, labels: Tensor, l2: float = 1.0, max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """L2-regularised logistic regression by L-BFGS: minimises mean log-loss + (l2 / 2n)·‖w‖² (bias unpenalised)."""
    x, y = features.double(), labels.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 / (2 * len(y)) * w.dot(w)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting half."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive.unsqueeze(1) > negative.unsqueeze(0)).double().mean()
    ties = (positive.unsqueeze(1) == negative.unsqueeze(0)).double().mean()
    return float(greater + 0.5 * ties)


@dataclass
class ProbeResult:
    accuracy: float                  # held-out accuracy over all folds
    auc: float                       # held-out AUC of the probe's scores
    fisher_ratio: float              # (m1 − m0)² / (s1² + s0²) of held-out scores along the probe direction
    fold_accuracies: list[float] = field(default_factory=list)
    pairs: int = 0


def separability(chosen: Tensor, rejected: Tensor, folds: int = 5, l2: float = 1.0, seed: int = 0) -> ProbeResult:
    """Pair-grouped k-fold probe accuracy of chosen (N, d) vs rejected (N, d) features."""
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} features differ in shape")
    n = chosen.shape[0]
    fold = pair_folds(n, folds, seed)
    features = torch.cat([chosen, rejected]).double()
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).double()
    row_fold = torch.cat([fold, fold])
    scores = torch.empty(2 * n, dtype=torch.float64)
    fold_accuracies = []
    for k in range(folds):
        test, train = row_fold == k, row_fold != k
        mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-8)
        w, b = fit_logistic((features[train] - mean) / std, labels[train], l2)
        scores[test] = ((features[test] - mean) / std) @ w + b
        fold_accuracies.append(float(((scores[test] > 0).double() == labels[test]).double().mean()))
    accuracy = float(((scores > 0).double() == labels).double().mean())
    s1, s0 = scores[labels == 1], scores[labels == 0]
    fisher = float((s1.mean() - s0.mean()) ** 2 / (s1.var() + s0.var()).clamp_min(1e-12))
    return ProbeResult(accuracy, auc(scores, labels), fisher, fold_accuracies, n)


# --------------------------------------------------------------------------- features from a model

@torch.no_grad()
def response_hidden_states(model, examples: list[TokenizedExample], pad_token_id: int, layers: list[int],
                           pooling: str = "last", batch_size: int = 32, progress: bool = False) -> dict[int, Tensor]:
    """layer -> (N, K, d) hidden states of every response of `examples`, pooled over its tokens.

    pooling "last": the hidden state at the last response token (it has read the whole
    response); "mean": the mean over the response tokens. Layer 0 is the embedding output and
    layer L the last block's output (Hugging Face's `hidden_states` indexing; -1 is the last).
    """
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    model.eval()
    device = next(model.parameters()).device
    out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for start in tqdm(range(0, len(examples), batch_size), desc="probe features", disable=not progress,
                      dynamic_ncols=True, mininterval=0.5):
        batch = collate(examples[start:start + batch_size], pad_token_id).to(device)
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                       output_hidden_states=True).hidden_states
        mask = batch.response_mask.float()
        last = (mask * torch.arange(mask.shape[1], device=device)).argmax(-1)  # index of the last response token
        for layer in layers:
            h = hidden[layer].float()
            pooled = h[torch.arange(h.shape[0], device=device), last] if pooling == "last" else \
                (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            out[layer].append(pooled.view(batch.num_examples, batch.num_responses, -1).cpu())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def resolve_layers(spec: str, num_layers: int) -> list[int]:
    """"last", "all" (0..L) or a comma list such as "0,2,-1" -> hidden_states indices in 0..L."""
    if spec == "last":
        return [num_layers]
    if spec == "all":
        return list(range(num_layers + 1))
    layers = [int(x) for x in spec.split(",")]
    return [layer % (num_layers + 1) for layer in layers]


def run_probe(model_path: str, source: str, out_dir: Path, *, layers: str = "last", pooling: str = "last",
              folds: int = 5, l2: float = 1.0, limit: int | None = None, task_options: dict | None = None,
              max_length: int = 512, max_prompt_length: int = 256, seed: int = 0, progress: bool = True,
              loading: dict | None = None) -> dict:
    """The probe on a model and a preference data source; writes probe.json and probe.png to out_dir.

    `source` is any data source `preftune train` reads. For `task:<name>` the pairs are the
    model's own samples labelled by the task's labeller, exactly as training would make them.
    `loading`: load_causal_lm's safe-loading options (model_source.flag_loading).
    """
    from preftune.config import DataConfig, TaskDataConfig
    from preftune.data.prepare import prepare_data
    from preftune.models import load_tokenizer_and_model

    tokenizer, model = load_tokenizer_and_model(model_path, **(loading or {}))
    rows, task_stats = source, {}
    if source.startswith("task:"):
        from preftune.tasks import get_task
        from preftune.tasks.data import build_task_rows

        task = get_task(source.split(":", 1)[1], **(task_options or {}))
        task_cfg = TaskDataConfig(options=task_options or {}, prompts=limit)
        rows, task_stats = build_task_rows(task, task_cfg, "pairwise", model, tokenizer, seed, progress)
    data = prepare_data(DataConfig(source=source, kind="pairwise", max_length=max_length,
                                   max_prompt_length=max_prompt_length, limit=limit), tokenizer, "pairwise", seed,
                        None if rows is source else rows)
    chosen_layers = resolve_layers(layers, model.config.num_hidden_layers)
    features = response_hidden_states(model, data.train, tokenizer.pad_token_id, chosen_layers, pooling,
                                      progress=progress)
    results = {layer: separability(f[:, 0], f[:, 1], folds, l2, seed) for layer, f in features.items()}
    report = {"model": model_path, "data": source, "pairs": len(data.train), "pooling": pooling, "folds": folds,
              "l2": l2, "seed": seed, "layers": {str(layer): asdict(r) for layer, r in results.items()},
              **({"task_data": task_stats} if task_stats else {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(report, indent=1))
    from preftune.report.measure_plots import plot_probe

    report["plot"] = str(plot_probe(results, out_dir / "probe.png"))
    return report


def format_probe(report: dict) -> str:
    lines = [f"{'layer':>6}{'accuracy':>10}{'AUC':>8}{'Fisher':>9}   folds"]
    for layer, r in report["layers"].items():
        folds = " ".join(f"{a:.2f}" for a in r["fold_accuracies"])
        fisher = f"{r['fisher_ratio']:.2f}" if math.isfinite(r["fisher_ratio"]) else "inf"
        lines.append(f"{layer:>6}{r['accuracy']:>10.3f}{r['auc']:>8.3f}{fisher:>9}   {folds}")
    return "\n".join(lines)
