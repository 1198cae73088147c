"""Offline rows made from a toy base model's own samples, labelled by the toy's ground truth (diffusion.md §12).

`toy_examples(kind, ...)` returns the same `Example`s a data file would give, with the samples held
as tensors: pairs and lists of base samples ranked by the reward, positive/negative sets, StructuralDPO
pairs (one real sequence partially noised twice, then denoised), CPO's condition pairs, and expert sets.
"""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.diffusion.data import Example, ImageRef
from preftune.diffusion.sampling import sample


def _ref(x: Tensor, i: int, field: str) -> ImageRef:
    return ImageRef(x, f"toy sample {i}", field)


def base_samples(model, network, n: int, conditions, generator: torch.Generator, steps: int) -> Tensor:
    """n samples of the base network with its stochastic sampler (DDIM eta 1 / flow SDE a 0.7)."""
    stochastic = "ddim" if model.schedule.kind == "ddpm" else "sde"
    noise = 1.0 if stochastic == "ddim" else 0.7
    cond = model.condition(conditions) if conditions is not None else None
    return sample(model.call(network), model.schedule, (n, *model.sample_shape), cond, steps=steps,
                  sampler=stochastic, noise=noise, generator=generator).x0


def _conditions(task, n: int, g: torch.Generator):
    return task.sample_conditions(n, g)


def _repeat(conditions, k: int):
    return None if conditions is None else torch.as_tensor(conditions).repeat_interleave(k, dim=0)


def _condition_at(conditions, i: int):
    return None if conditions is None else torch.as_tensor(conditions)[i]


def ranked_groups(model, network, reward, cfg, g: torch.Generator, k: int) -> tuple[Tensor, Tensor, object]:
    """(samples (P, k, ...), rewards (P, k), conditions) for P = cfg.prompts groups of k base samples."""
    task = model.task
    conditions = _conditions(task, cfg.prompts, g)
    flat_conditions = _repeat(conditions, k)
    x = base_samples(model, network, cfg.prompts * k, flat_conditions, g, cfg.steps)
    scores = reward(x, flat_conditions)
    return x.reshape(cfg.prompts, k, *x.shape[1:]), scores.reshape(cfg.prompts, k), conditions


def toy_examples(kind: str, cfg, model, network, reward, seed: int, method: str = "") -> list[Example]:
    """Rows of `kind` for a toy model (see the module docstring); cfg is the recipe's data.toy section."""
    g = torch.Generator().manual_seed(seed)
    task = model.task
    if kind == "image-pairs" and cfg.pairing == "structural":
        return structural_pairs(model, network, reward, cfg, g, per_segment=False)
    if kind == "segment-pairs":
        return structural_pairs(model, network, reward, cfg, g, per_segment=True)
    if kind == "image-pairs" and cfg.pairing == "control":
        return control_image_pairs(task, cfg, g)
    if kind in ("image-pairs", "image-lists"):
        k = 2 if kind == "image-pairs" else cfg.samples_per_prompt
        x, scores, conditions = ranked_groups(model, network, reward, cfg, g, k)
        order = scores.argsort(dim=1, descending=True)
        examples = []
        for i in range(len(x)):
            if kind == "image-pairs" and scores[i, 0] == scores[i, 1]:
                continue
            ranked = order[i] if kind == "image-pairs" else torch.arange(k)
            examples.append(Example(_condition_at(conditions, i), [_ref(x[i, j], i, f"sample_{j}") for j in ranked.tolist()],
                                    f"toy group {i}", scores=scores[i, ranked].tolist()))
        return examples
    if kind == "unpaired":
        return labelled_sets(model, network, reward, cfg, g)
    if kind == "condition-pairs":
        return condition_pairs(task, cfg, g)
    if kind == "expert-online":
        return expert_set(task, cfg.positives or cfg.prompts, g)
    raise ValueError(f"toy data cannot make {kind!r} rows")


def labelled_sets(model, network, reward, cfg, g) -> list[Example]:
    """Positive and negative samples: base samples split by the toy's target test (`label: target`) or
    by reward (top half positive), or real data (positive) against base samples (`label: data`, DDO)."""
    task = model.task
    n = cfg.prompts * cfg.samples_per_prompt
    conditions = _conditions(task, n, g)
    x = base_samples(model, network, n, conditions, g, cfg.steps)
    if cfg.label == "data":
        real, real_conditions = task.sample_data(cfg.positives or n, g, conditions)
        positives = [(real[i], _condition_at(real_conditions, i)) for i in range(len(real))]
        negatives = [(x[i], _condition_at(conditions, i)) for i in range(n)]
    else:
        hit = task.target(x, conditions) if cfg.label == "target" else None
        if hit is None:
            scores = reward(x, conditions)
            hit = scores > scores.median()
        positives = [(x[i], _condition_at(conditions, i)) for i in range(n) if hit[i]]
        negatives = [(x[i], _condition_at(conditions, i)) for i in range(n) if not hit[i]]
    rows = [Example(c, [_ref(v, i, "image")], f"toy positive {i}", extras={"label": True}) for i, (v, c) in enumerate(positives)]
    rows += [Example(c, [_ref(v, i, "image")], f"toy negative {i}", extras={"label": False}) for i, (v, c) in enumerate(negatives)]
    return rows


def expert_set(task, n: int, g: torch.Generator) -> list[Example]:
    """Expert samples: data points that hit the task's target (Diffusion-DRO's unpaired expert images)."""
    kept, attempts = [], 0
    while sum(len(x) for x, _ in kept) < n and attempts < 1000:
        conditions = task.sample_conditions(4 * n, g)
        x, conditions = task.sample_data(4 * n, g, conditions)
        hit = task.target(x, conditions)
        kept.append((x[hit], None if conditions is None else torch.as_tensor(conditions)[hit]))
        attempts += 1
    x = torch.cat([v for v, _ in kept])[:n]
    conditions = None if kept[0][1] is None else torch.cat([c for _, c in kept])[:n]
    return [Example(_condition_at(conditions, i), [_ref(x[i], i, "image")], f"toy expert {i}") for i in range(len(x))]


def condition_pairs(task, cfg, g) -> list[Example]:
    """CPO's pairs: a data point x with its true control c (chosen) and c + delta, |delta| = eta (rejected)."""
    x, controls = task.sample_data(cfg.prompts, g)
    angle = 2 * torch.pi * torch.rand(cfg.prompts, generator=g)
    shifted = controls + cfg.eta * torch.stack([angle.cos(), angle.sin()], -1)
    return [Example(None, [_ref(x[i], i, "image")], f"toy condition pair {i}",
                    extras={"controls": [_ref(controls[i], i, "control_chosen"), _ref(shifted[i], i, "control_rejected")]})
            for i in range(cfg.prompts)]


def control_image_pairs(task, cfg, g) -> list[Example]:
    """The image-pair counterpart of `condition_pairs` (same draws): under the true control c, the data
    point x is preferred to x + delta, the point that fits the shifted control c + delta."""
    return [Example(ex.extras["controls"][0].value, [ex.samples[0], _ref(ex.samples[0].value + (
        ex.extras["controls"][1].value - ex.extras["controls"][0].value), i, "image_1")], ex.origin)
        for i, ex in enumerate(condition_pairs(task, cfg, g))]


@torch.no_grad()
def structural_pairs(model, network, reward, cfg, g, per_segment: bool) -> list[Example]:
    """StructuralDPO (diffusion.md §9): a real sequence x partially noised twice at level eta,
    x_eta^(i) = (1 - eta) x + eta eps_i, each denoised to 0 by the base model (flow ODE). Labels per
    frame by the frame reward (segment pairs) or per clip by the summed reward (image pairs)."""
    task, schedule = model.task, model.schedule
    if schedule.kind != "flow":
        raise ValueError("structural pairs are built with a flow model (partial noising is x_t = (1 - t) x + t eps)")
    real, conditions = task.sample_data(cfg.prompts, g)
    both = real.repeat_interleave(2, dim=0)
    start = schedule.noisy(both, torch.randn(both.shape, generator=g), torch.full((len(both),), cfg.eta))
    steps = max(1, round(cfg.eta * cfg.steps))
    grid = torch.linspace(cfg.eta, 0.0, steps + 1)
    call = model.call(network)
    x = start
    for k in range(steps):
        t = grid[k].expand(len(x))
        x = x + (grid[k + 1] - grid[k]) * call(x, schedule.model_time(t), None)
    x = x.reshape(cfg.prompts, 2, *x.shape[1:])
    examples = []
    for i in range(cfg.prompts):
        frame = task.frame_rewards(x[i])                              # (2, F)
        if per_segment:
            labels = torch.sign(frame[0] - frame[1]).tolist()
            examples.append(Example(None, [_ref(x[i, 0], i, "video_0"), _ref(x[i, 1], i, "video_1")],
                                    f"toy structural pair {i}", extras={"segment_labels": labels}))
        else:
            total = frame.sum(-1)
            if total[0] == total[1]:
                continue
            order = [0, 1] if total[0] > total[1] else [1, 0]
            examples.append(Example(None, [_ref(x[i, j], i, f"video_{j}") for j in order], f"toy structural pair {i}",
                                    scores=total[order].tolist()))
    return examples
