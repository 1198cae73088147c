"""DenseDPO (Wu et al., NeurIPS 2025, arXiv 2506.03517): segment-level preferences for video (diffusion.md §9)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, error_gap, require_samples
from preftune.diffusion.records import Denoise
from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


def latent_frame_segments(num_frames: int, frames_per_segment: int, temporal_stride: int = 1,
                          causal_first_frame: bool = False) -> Tensor:
    """(F_latent,) the segment index of each latent frame of a video of `num_frames` pixel frames.

    Pixel frames are cut into ceil(L/s) segments of s frames. A latent frame stands for `temporal_stride`
    consecutive pixel frames (a causal video VAE, e.g. stride 4 with causal_first_frame, keeps the first
    pixel frame alone: latent frames 1 + (L - 1)/4); it belongs to the segment of its first pixel frame.
    """
    if num_frames < 1 or frames_per_segment < 1 or temporal_stride < 1:
        raise ValueError("num_frames, frames_per_segment and temporal_stride must be >= 1")
    if causal_first_frame:
        starts = [0] + list(range(1, num_frames, temporal_stride))
    else:
        starts = list(range(0, num_frames, temporal_stride))
    return torch.tensor([start // frames_per_segment for start in starts])


def segment_errors(squared: Tensor, frame_segments: Tensor, frame_dim: int = 1) -> Tensor:
    """(N, S) mean squared error over the dims of each segment's latent frames.

    squared: (N, ..., F, ...) elementwise squared errors with the latent frames along `frame_dim`.
    """
    per_frame = squared.movedim(frame_dim, 1).flatten(2).mean(-1)                  # (N, F)
    segments = int(frame_segments.max()) + 1
    one_hot = torch.nn.functional.one_hot(frame_segments.to(per_frame.device), segments).to(per_frame.dtype)
    return per_frame @ one_hot / one_hot.sum(0)


@register(
    name="dense_dpo", seed="dense-dpo", family=FAMILY, input_kind="segment-pairs", needs_reference=True,
    status="stable", extras=("segment_labels",),
    paper="Wu et al. 2025, DenseDPO: Fine-Grained Temporal Preference Optimization for Video Diffusion Models, "
          "arXiv 2506.03517",
    reconstructed="per-segment normalisation, beta and the shared eps are not pinned (diffusion.md §13.2): "
                  "mean over labelled segments by default, sum as an option",
    taxonomy=diffusion_taxonomy(["pairwise", "segment-level", "aligned-pairs"], ["offline"], ["fixed-reference", "reverse-kl"]),
)
def dense_dpo(policy: Denoise, reference: Denoise, *, segment_labels: Tensor, beta: float = 5000.0,
              normalise: str = "mean") -> MethodOutput:
    """Diffusion-DPO per temporal segment of two aligned videos, winner and loser chosen per segment.

    L = sum over segments f with y_f != tie of -log sigmoid(-(beta/2) y_f [Delta^f(x_0) - Delta^f(x_1)]),
    Delta^f = E^f_theta - E^f_ref restricted to the latent frames of f (Denoise.segments), divided by
    the number of labelled segments (normalise="mean") or not ("sum"). segment_labels: (B, S) with +1
    (sample 0 better on f), -1 (sample 1 better), 0 (tie: masked, no gradient). Pairs are built by
    partially noising one real video twice (StructuralDPO) so that they share motion and layout.
    """
    require_samples(policy, 2, "dense_dpo")
    if policy.segments is None or reference.segments is None:
        raise ValueError("dense_dpo needs per-segment errors (Denoise.segments)")
    if normalise not in ("mean", "sum"):
        raise ValueError(f"normalise must be 'mean' or 'sum', got {normalise!r}")
    gap = policy.segments - reference.segments                               # (B, 2, S)
    labels = segment_labels.to(gap.dtype)
    inside = -0.5 * beta * labels * (gap[:, 0] - gap[:, 1])                  # (B, S)
    labelled = labels != 0
    per_segment = torch.where(labelled, neg_log_sigmoid(inside), torch.zeros_like(inside))
    count = labelled.sum(-1).to(gap.dtype)
    loss = per_segment.sum(-1) / (count.clamp_min(1) if normalise == "mean" else 1)
    correct = ((inside > 0) & labelled).sum(-1) / count.clamp_min(1)
    return MethodOutput(loss, -0.5 * beta * error_gap(policy, reference),
                        {"accuracy": correct.detach(), "labelled_segments": count.detach()})


@tabular_check("dense_dpo")
def dense_dpo_check(fn=dense_dpo):
    """diffusion.md §12.6: tie segments contribute no gradient; one labelled segment spanning the whole
    video is Diffusion-DPO (value and gradient at theta = ref); the latent-frame -> segment map is right
    for a causal stride-4 VAE."""
    from preftune.diffusion.methods import checks
    from preftune.diffusion.methods.diffusion_dpo import diffusion_dpo

    results = []
    b, k, frames, dims = 6, 2, 4, 2
    p = checks.problem(samples=k, dims=frames * dims)
    segment_of_frame = torch.tensor([0, 0, 1, 2])

    def records(theta):
        record = p.denoise(theta, keep_prediction=True)
        squared = (record.prediction - p.eps).pow(2).reshape(b * k, frames, dims)  # eps-prediction: target eps
        return Denoise(record.error, segments=segment_errors(squared, segment_of_frame).reshape(b, k, -1))

    theta = p.theta()
    reference = records(p.theta_ref)
    reference = Denoise(reference.error.detach(), segments=reference.segments.detach())
    policy = records(theta)
    labels = torch.tensor([[1, 0, -1]] * b, dtype=checks.DTYPE)
    loss = checks.mean_loss(fn, policy, reference, segment_labels=labels, beta=5000.0)
    found = torch.autograd.grad(loss, policy.segments, retain_graph=True, allow_unused=True)[0]
    tie_grad = (torch.zeros_like(policy.segments) if found is None else found)[:, :, 1]
    results.append(checks.zero_gradient("dense_dpo", "a tie segment has zero gradient", tie_grad))
    results.append(checks.close("dense_dpo", "loss at theta = ref is log 2 (mean over labelled segments)",
                                checks.LOG2, loss.item()))
    labelled = labels != 0
    signed = (labels * (policy.segments[:, 0] - policy.segments[:, 1])).sum(-1) / labelled.sum(-1)
    results.append(checks.gradient_identity("dense_dpo", "grad at theta = ref equals beta/4 * mean over labelled "
                                            "segments of y_f grad(E^f_0 - E^f_1)", checks.grad(loss, theta),
                                            5000.0 / 4 * checks.grad(signed.mean(), theta)))
    whole = torch.zeros(frames, dtype=torch.long)
    single = Denoise(policy.error, segments=policy.error[..., None])
    single_ref = Denoise(reference.error, segments=reference.error[..., None])
    one = checks.mean_loss(fn, single, single_ref, segment_labels=torch.ones(b, 1, dtype=checks.DTYPE), beta=5000.0)
    base = diffusion_dpo(policy, reference, beta=5000.0).loss.mean()
    results.append(checks.gradient_identity("dense_dpo", "one segment over the whole video is Diffusion-DPO (gradient)",
                                            checks.grad(one, theta), checks.grad(base, theta)))
    squared = torch.arange(8.0).reshape(1, 4, 2) ** 2
    results.append(checks.close("dense_dpo", "whole-video segment error equals the mean error", float(squared.mean()),
                                float(segment_errors(squared, whole)[0, 0])))
    mapping = latent_frame_segments(num_frames=17, frames_per_segment=8, temporal_stride=4, causal_first_frame=True)
    expected = torch.tensor([0, 0, 0, 1, 1])   # pixel frames 0 | 1-4 | 5-8 | 9-12 | 13-16, segments of 8 frames
    results.append(checks.close("dense_dpo", "latent-frame -> segment map (17 frames, stride 4 causal, 8 per segment)",
                                0.0, float((mapping - expected).abs().sum()), 0.0))
    return results
