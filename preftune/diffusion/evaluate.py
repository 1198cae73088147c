"""What a diffusion run measures (diffusion.md §12 "always log"), on fixed noise so that steps compare.

- reward: the configured reward of deterministic samples (DDIM eta 0 / flow ODE) from fixed x_T;
- toys: target fraction (the share hitting the task's target), on-manifold fraction (the share where
  the data lie: the quality proxy that must not collapse), MMD to fresh data, and per task the motion
  proxy (video) or the control error (control);
- KL proxy E_data ||f_theta - f_ref||^2 at random (t, eps) (should stay bounded);
- implicit accuracy on held-out pairs: how often -(E_theta - E_ref), averaged over 4 shared (t, eps),
  orders a held-out pair (or every ordered pair of a list) as its label does.
A PNG of the samples goes to samples/step-N.png.
"""
from __future__ import annotations

from pathlib import Path

import torch

from preftune.diffusion.batches import generator, kl_proxy
from preftune.diffusion.online import sampler_settings
from preftune.diffusion.sampling import sample


class Evaluator:
    def __init__(self, cfg, model, reward, reference=None, eval_examples=None, accelerator=None):
        self.cfg, self.model, self.reward, self.reference = cfg, model, reward, reference
        self.eval_examples = eval_examples or []
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")
        self.initial: dict = {}
        n = cfg.eval.samples
        g = generator(cfg.eval.seed, "evaluation")
        task = model.task
        self.conditions = task.sample_conditions(n, g) if task is not None else self._captions(n, g)
        self.x_T = torch.randn((n, *model.sample_shape), generator=g)
        self.data = task.sample_data(n, g, self.conditions)[0] if task is not None else None
        sampler, noise = sampler_settings(model.schedule, cfg.rollout, deterministic=True)
        self.sampler = cfg.eval.sampler if cfg.eval.sampler != "auto" else sampler
        self.noise = noise if self.sampler != "ddim" or cfg.eval.sampler == "auto" else cfg.rollout.noise

    def _captions(self, n: int, g):
        captions = [ex.condition for ex in self.eval_examples if isinstance(ex.condition, str)]
        if not captions and self.model.pipeline is not None:
            captions = [""]
        if not captions:
            return None
        return [captions[int(i)] for i in torch.randint(len(captions), (n,), generator=g)]

    @torch.no_grad()
    def samples(self, network) -> torch.Tensor:
        cond = self.model.condition(self.conditions, self.device) if self.conditions is not None else None
        guidance = self.cfg.rollout.guidance
        uncond = self.model.null_condition(len(self.x_T), self.device) if guidance != 1.0 else None
        was_training = network.training
        network.eval()
        x0 = sample(self.model.call(network), self.model.schedule, tuple(self.x_T.shape), cond, steps=self.cfg.eval.steps,
                    sampler=self.sampler, noise=self.noise, x_T=self.x_T.to(self.device), guidance=guidance,
                    uncond=uncond, generator=generator(self.cfg.eval.seed, "eval sampler")).x0
        network.train(was_training)
        return x0

    @torch.no_grad()
    def __call__(self, network, step: int, run_dir: Path | None = None) -> dict:
        x0 = self.samples(network)
        decoded = self.model.decode(x0).cpu()
        conditions = self.conditions if not isinstance(self.conditions, torch.Tensor) else self.conditions.cpu()
        rewards = self.reward(decoded, conditions)
        metrics = {"eval/reward": float(rewards.float().mean()), "eval/reward_std": float(rewards.float().std())}
        task = self.model.task
        if task is not None:
            from preftune.diffusion.toys import mmd

            metrics["eval/target_fraction"] = float(task.target(decoded, conditions).float().mean())
            metrics["eval/on_manifold"] = float(task.on_manifold(decoded, conditions).float().mean())
            metrics["eval/mmd"] = mmd(decoded, self.data)
            if hasattr(task, "motion"):
                metrics["eval/motion"] = float(task.motion(decoded).mean())
                metrics["eval/data_motion"] = float(task.motion(self.data).mean())
            if task.control_dim:
                metrics["eval/control_error"] = float((decoded - conditions).norm(dim=-1).mean())
        reference = self._reference_call()
        if reference is not None:
            metrics.update(self._implicit(network, reference))
            if self.data is not None:
                cond = self.model.condition(self.conditions, self.device) if self.conditions is not None else None
                metrics["eval/kl_proxy"] = kl_proxy(self.model.call(network), reference,
                                                    self.data.to(self.device), cond, self.model.schedule,
                                                    generator(self.cfg.eval.seed, "kl proxy"))
        if run_dir is not None and self.cfg.eval.grid:
            from preftune.report.diffusion import save_sample_grid

            save_sample_grid(decoded[: self.cfg.eval.grid if task is None else len(decoded)], task,
                             Path(run_dir) / "samples" / f"step-{step:07d}.png", conditions,
                             title=f"step {step}: reward {metrics['eval/reward']:.3f}")
        if step == 0:
            self.initial = dict(metrics)
        return metrics

    def _reference_call(self):
        from preftune.diffusion.models import reference_call

        return None if self.reference is None else reference_call(self.reference, self.model)

    @torch.no_grad()
    def _implicit(self, network, reference) -> dict:
        """Held-out implicit accuracy: the learned implicit reward orders held-out samples as labelled."""
        pairs = [ex for ex in self.eval_examples if len(ex.samples) >= 2]
        if not pairs:
            return {}
        from preftune.diffusion.offline import stack_conditions

        shape = self.model.pixel_shape
        x0 = torch.stack([torch.stack([ref.load(shape) for ref in ex.samples]) for ex in pairs]).to(self.device)
        b, k = x0.shape[:2]
        flat = self.model.encode_images(x0.flatten(0, 1))
        raw = stack_conditions(pairs)
        cond = None
        if raw is not None:
            encoded = self.model.condition(raw, self.device)
            cond = {key: value.repeat_interleave(k, dim=0) for key, value in encoded.items()}
        schedule, g = self.model.schedule, generator(self.cfg.eval.seed, "implicit accuracy")
        implicit = torch.zeros(b, k, device=self.device)
        policy_call, reference_call = self.model.call(network), reference
        for _ in range(4):
            t = schedule.sample_time(b, g, self.device).repeat_interleave(k)
            eps = torch.randn((b, *flat.shape[1:]), generator=g).to(flat).repeat_interleave(k, dim=0)
            x_t, target, time = schedule.noisy(flat, eps, t), schedule.target(flat, eps, t), schedule.model_time(t)
            ref_error = ((reference_call(x_t, time, cond) - target) ** 2).flatten(1).mean(1)
            error = ((policy_call(x_t, time, cond) - target) ** 2).flatten(1).mean(1)
            implicit += -(error - ref_error).reshape(b, k) / 4
        # Samples are stored preferred first (pairs) or with scores (lists): compare every ordered pair.
        scores = torch.tensor([ex.scores if ex.scores else list(range(k, 0, -1)) for ex in pairs], device=self.device)
        better = scores[:, :, None] > scores[:, None, :]
        gap = implicit[:, :, None] - implicit[:, None, :]
        agree = (better & (gap > 0)).float() + 0.5 * (better & (gap == 0)).float()   # a tie counts half
        return {"eval/implicit_accuracy": float(agree.sum() / better.sum().clamp_min(1))}

