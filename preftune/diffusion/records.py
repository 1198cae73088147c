"""What a diffusion method sees of a model: denoising errors, or per-step log-probabilities.

A diffusion method never sees a network. The model-side code (preftune/diffusion/batches.py)
runs the trainable model and the reference on the same noised inputs and hands the method one
record per model, exactly as the language-model methods receive `Logps` (records.py).

Sample order is part of the contract, as for `Logps`: for pairs sample 0 is the preferred one
(winner, expert, real, the clean control's prediction) and sample 1 the other; for lists the K
samples come with scores; for groups the K entries are J fresh (t, eps) draws of one sample.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Denoise:
    """Denoising errors of K samples per example under one model (diffusion.md §0).

    error:      (B, K) E = reduce_dims ||prediction - target||^2, mean over dims by default; the
                implicit log-ratio of a sample is -(E_theta - E_ref) up to the weight T*w(t)/2.
    segments:   (B, K, S) the same error restricted to the latent frames of each segment (DenseDPO),
                present when the data carry per-segment labels.
    prediction: (B, K, *dims) the raw network output, kept for drift terms (AWM's ||v_theta - v_ref||^2).
    time:       (B, K) the noise level t in [0, 1] of each error (flow time; DDPM t / T), for methods
                that weight errors by t (AWM).
    """

    error: Tensor
    segments: Tensor | None = None
    prediction: Tensor | None = None
    time: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return self.error.shape[1]

    def loggable(self) -> dict[str, Tensor]:
        """(B, K) values the trainer logs per sample (train/metrics.py)."""
        return {"error": self.error.detach()}


@dataclass(frozen=True)
class Steps:
    """Log-probabilities of stored sampler transitions x_k -> x_{k-1} under one model (diffusion.md §0).

    logp: (B, K) log N(x_{k-1}; mean, std^2 I), averaged over dims (the official codes' reduction).
    mean: (B, K, *dims) the Gaussian step's mean, for KL terms between two models (Flow-GRPO).
    std:  (B, K) the step's standard deviation (the same for every model at a given step).
    """

    logp: Tensor
    mean: Tensor | None = None
    std: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return self.logp.shape[1]

    def loggable(self) -> dict[str, Tensor]:
        return {"step_logp": self.logp.detach()}
