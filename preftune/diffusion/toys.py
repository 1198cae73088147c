"""The CPU-scale toy settings of diffusion.md §12: data, rewards and metrics with known ground truth.

- gmm:         Toy A, 8 Gaussian modes on a circle of radius 2 (sigma 0.1); the reward
               -||x - mu*||^2 prefers mode 0; base target-mode fraction ~1/8.
- gmm-cond:    Toy A, conditional: class c draws mode c with probability 1/2 and each 45-degree
               neighbour with 1/4; the reward prefers the +45 degree neighbour (base fraction ~1/4).
- gmm-video:   a toy "video" of 4 frames x 2-D: a sequence walks one mode per frame around the circle
               from a random start; the per-frame reward prefers the walk that starts at mode 0.
- gmm-control: a 2-D control c on the circle, x ~ N(c, 0.05^2); the reward is -||x - c||^2 (adherence).
- digits:      Toy B, the 8x8 digits bundled with scikit-learn in [-1, 1], class-conditional; the
               reward is log p(y = c | x) under a logistic-regression classifier fitted on the same data.

Every task says how to draw data and conditions, how to score samples (reward, target hit, on the
data manifold) and what its natural metrics are (evaluate.py computes them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

RADIUS, SIGMA, MODES = 2.0, 0.1, 8


def mode_centres(modes: int = MODES, radius: float = RADIUS) -> Tensor:
    angles = 2 * math.pi * torch.arange(modes, dtype=torch.float32) / modes
    return radius * torch.stack([angles.cos(), angles.sin()], dim=-1)


@dataclass
class ToyTask:
    """A toy setting: what x and its condition look like, and the ground truth to score samples by."""

    name: str
    shape: tuple[int, ...]
    num_classes: int = 0          # class-conditional (a null class num_classes is added for dropout/CFG)
    control_dim: int = 0          # continuous control vector
    hit_radius: float = 0.5
    description: str = ""

    @property
    def condition_kind(self) -> str:
        return "class" if self.num_classes else ("control" if self.control_dim else "none")

    def sample_conditions(self, n: int, g: torch.Generator):
        if self.num_classes:
            return torch.randint(0, self.num_classes, (n,), generator=g)
        if self.control_dim:
            angle = 2 * math.pi * torch.rand(n, generator=g)
            return RADIUS * torch.stack([angle.cos(), angle.sin()], dim=-1)
        return None

    def sample_data(self, n: int, g: torch.Generator, conditions=None) -> tuple[Tensor, object]:
        raise NotImplementedError

    def reward(self, x: Tensor, conditions) -> Tensor:
        raise NotImplementedError

    def target(self, x: Tensor, conditions) -> Tensor:
        """(n,) bool: the sample hits its target (the target-mode fraction's numerator)."""
        raise NotImplementedError

    def on_manifold(self, x: Tensor, conditions) -> Tensor:
        """(n,) bool: the sample lies where the data do (the quality proxy must not collapse)."""
        raise NotImplementedError


class Mixture(ToyTask):
    """Toy A: the 8-mode mixture, unconditional (target mode 0) or conditional (target c + 1)."""

    def __init__(self, conditional: bool):
        super().__init__("gmm-cond" if conditional else "gmm", (2,), num_classes=MODES if conditional else 0,
                         description="8 Gaussian modes on a circle" + (", class-conditional" if conditional else ""))
        self.centres = mode_centres()

    def modes_of(self, n: int, g: torch.Generator, conditions) -> Tensor:
        if conditions is None:
            return torch.randint(0, MODES, (n,), generator=g)
        offset = torch.multinomial(torch.tensor([0.25, 0.5, 0.25]), n, replacement=True, generator=g) - 1
        return (conditions + offset) % MODES

    def sample_data(self, n, g, conditions=None):
        if self.num_classes and conditions is None:
            conditions = self.sample_conditions(n, g)
        modes = self.modes_of(n, g, conditions)
        return self.centres[modes] + SIGMA * torch.randn(n, 2, generator=g), conditions

    def target_centre(self, n: int, conditions) -> Tensor:
        if conditions is None:
            return self.centres[0].expand(n, 2)
        return self.centres[(torch.as_tensor(conditions) + 1) % MODES]

    def reward(self, x, conditions):
        return -((x - self.target_centre(len(x), conditions)) ** 2).sum(-1)

    def target(self, x, conditions):
        return (x - self.target_centre(len(x), conditions)).norm(dim=-1) < self.hit_radius

    def on_manifold(self, x, conditions):
        return (x[:, None, :] - self.centres[None]).norm(dim=-1).min(-1).values < 3 * SIGMA


class MixtureVideo(ToyTask):
    """A 4-frame walk around the 8 modes, one mode per frame (DenseDPO's toy video, diffusion.md §12)."""

    frames = 4

    def __init__(self):
        super().__init__("gmm-video", (4, 2), description="4 frames x 2-D, one mode per frame")
        self.centres = mode_centres()

    def sample_data(self, n, g, conditions=None):
        start = torch.randint(0, MODES, (n,), generator=g)
        modes = (start[:, None] + torch.arange(self.frames)) % MODES
        return self.centres[modes] + SIGMA * torch.randn(n, self.frames, 2, generator=g), None

    def frame_rewards(self, x: Tensor) -> Tensor:
        """(n, F) per-frame reward -||x_f - mu*_f||^2 with mu*_f = mode f (the walk from mode 0)."""
        return -((x - self.centres[: self.frames]) ** 2).sum(-1)

    def reward(self, x, conditions):
        return self.frame_rewards(x).mean(-1)

    def target(self, x, conditions):
        return (x - self.centres[: self.frames]).norm(dim=-1).lt(self.hit_radius).all(-1)

    def on_manifold(self, x, conditions):
        near = (x[:, :, None, :] - self.centres).norm(dim=-1).min(-1).values < 3 * SIGMA
        return near.all(-1)

    @staticmethod
    def motion(x: Tensor) -> Tensor:
        """(n,) mean distance between consecutive frames (DenseDPO's motion proxy)."""
        return (x[:, 1:] - x[:, :-1]).norm(dim=-1).mean(-1)


class ControlCircle(ToyTask):
    """CPO's toy: a 2-D control on the circle and x ~ N(c, 0.05^2); the base learns jittered controls."""

    noise = 0.05

    def __init__(self):
        super().__init__("gmm-control", (2,), control_dim=2, hit_radius=0.1,
                         description="x ~ N(c, 0.05^2), c a 2-D control on the circle")

    def sample_data(self, n, g, conditions=None):
        if conditions is None:
            conditions = self.sample_conditions(n, g)
        return conditions + self.noise * torch.randn(n, 2, generator=g), conditions

    def reward(self, x, conditions):
        return -((x - conditions) ** 2).sum(-1)

    def target(self, x, conditions):
        return (x - conditions).norm(dim=-1) < self.hit_radius

    def on_manifold(self, x, conditions):
        return (x.norm(dim=-1) - RADIUS).abs() < 0.3


class Digits(ToyTask):
    """Toy B: scikit-learn's 8x8 digits in [-1, 1], class-conditional; a classifier's log-prob as reward."""

    def __init__(self):
        super().__init__("digits", (1, 8, 8), num_classes=10, description="8x8 digits (scikit-learn), 10 classes")
        self._data = None
        self._classifier = None

    def data(self) -> tuple[Tensor, Tensor]:
        if self._data is None:
            try:
                from sklearn.datasets import load_digits
            except ImportError as error:  # pragma: no cover - scikit-learn is in the diffusion extra
                raise ImportError("the digits toy needs scikit-learn: pip install 'preftune[diffusion]'") from error
            digits = load_digits()
            images = torch.tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0     # 0..16 -> [-1, 1]
            self._data = (images[:, None], torch.tensor(digits.target))
        return self._data

    def classifier(self):
        """Multinomial logistic regression on the flattened images (fitted once, deterministic)."""
        if self._classifier is None:
            from sklearn.linear_model import LogisticRegression

            images, labels = self.data()
            model = LogisticRegression(max_iter=2000, C=1.0)
            model.fit(images.flatten(1).numpy(), labels.numpy())
            self._classifier = (torch.tensor(model.coef_, dtype=torch.float32),
                                torch.tensor(model.intercept_, dtype=torch.float32))
        return self._classifier

    def log_probs(self, x: Tensor) -> Tensor:
        weight, bias = self.classifier()
        return torch.log_softmax(x.flatten(1).float().clamp(-1, 1) @ weight.T + bias, dim=-1)

    def sample_data(self, n, g, conditions=None):
        images, labels = self.data()
        if conditions is None:
            index = torch.randint(0, len(images), (n,), generator=g)
            return images[index], labels[index]
        chosen = []
        for c in torch.as_tensor(conditions).tolist():
            pool = (labels == c).nonzero().flatten()
            chosen.append(pool[torch.randint(0, len(pool), (1,), generator=g)].item())
        return images[chosen], torch.as_tensor(conditions)

    def reward(self, x, conditions):
        return self.log_probs(x).gather(1, torch.as_tensor(conditions).long()[:, None])[:, 0]

    def target(self, x, conditions):
        return self.log_probs(x).argmax(-1) == torch.as_tensor(conditions)

    def on_manifold(self, x, conditions):
        return self.log_probs(x).exp().max(-1).values > 0.5   # the classifier recognises some digit


TASKS = {"gmm": lambda: Mixture(False), "gmm-cond": lambda: Mixture(True), "gmm-video": MixtureVideo,
         "gmm-control": ControlCircle, "digits": Digits}


def get_task(name: str) -> ToyTask:
    if name not in TASKS:
        raise ValueError(f"unknown toy task {name!r}; toy tasks: {', '.join(TASKS)}")
    return TASKS[name]()


def mmd(x: Tensor, y: Tensor, bandwidth: float = 0.5) -> float:
    """Squared maximum mean discrepancy with an RBF kernel (the biased V-statistic), on flattened samples."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    kernel = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth ** 2))
    return float(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())


@dataclass
class ToyModelConfig:
    """The network and pretraining of a toy base model (cached by a fingerprint of these settings)."""

    task: str = "gmm"
    parameterization: str = "epsilon"    # epsilon (DDPM) | flow (rectified flow)
    timesteps: int = 100                 # DDPM T (linear beta 1e-4 -> 0.02); flow models use 1000
    hidden: int = 128
    layers: int = 3
    steps: int = 3000                    # pretraining steps (few steps: a deliberately underfit base)
    batch_size: int = 512
    lr: float = 2e-3
    condition_dropout: float = 0.1       # share of null conditions (classifier-free guidance)
    control_jitter: float = 0.0          # controls seen in pretraining are c + N(0, jitter^2) (CPO's toy)
    seed: int = 0
    extra: dict = field(default_factory=dict)
