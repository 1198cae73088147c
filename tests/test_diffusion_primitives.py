"""denoise_error, step_logprob, the schedules and SmPO's inversion, against diffusers' schedulers.

The primitives compute from `Schedule` tensors so that `preftune verify` runs without diffusers;
these tests pin those tensors and formulas to what diffusers' own schedulers give.
"""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from preftune.diffusion.inversion import inversion_grid, renoise_invert
from preftune.diffusion.primitives import denoise_error, ddim_step, reduce_dims, step_logprob
from preftune.diffusion.schedules import Schedule


def ddim(prediction_type="epsilon", steps=100):
    return diffusers.DDIMScheduler(num_train_timesteps=steps, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   clip_sample=False, set_alpha_to_one=False, prediction_type=prediction_type)


def test_linear_schedule_equals_ddpm_scheduler():
    ours = Schedule.linear(100)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noising_and_targets_are_the_schedulers(prediction_type):
    scheduler = ddim(prediction_type)
    schedule = Schedule.from_scheduler(scheduler)
    plain = Schedule.linear(100, parameterization=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    t = torch.tensor([0, 10, 50, 90, 99])
    torch.testing.assert_close(schedule.noisy(x0, eps, t), scheduler.add_noise(x0, eps, t))
    torch.testing.assert_close(plain.noisy(x0, eps, t), scheduler.add_noise(x0, eps, t), rtol=1e-6, atol=1e-6)
    want = eps if prediction_type == "epsilon" else scheduler.get_velocity(x0, eps, t)
    torch.testing.assert_close(schedule.target(x0, eps, t), want)
    torch.testing.assert_close(plain.target(x0, eps, t), want, rtol=1e-6, atol=1e-6)
    # split() inverts the parameterisation: the exact prediction gives back x0 and eps.
    x_hat, eps_hat = schedule.split(schedule.target(x0, eps, t), schedule.noisy(x0, eps, t), t)
    torch.testing.assert_close(x_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-4, atol=1e-4)


def test_flow_schedule_from_the_flow_match_scheduler():
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = Schedule.from_scheduler(scheduler)
    assert (schedule.kind, schedule.parameterization, schedule.num_train_timesteps) == ("flow", "flow", 1000)
    grid = schedule.grid(8)
    scheduler.set_timesteps(8)
    torch.testing.assert_close(grid, scheduler.sigmas.float())
    x0, eps, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0.1, 0.4, 0.7, 1.0])
    torch.testing.assert_close(schedule.noisy(x0, eps, t), (1 - t)[:, None] * x0 + t[:, None] * eps)
    torch.testing.assert_close(schedule.target(x0, eps, t), eps - x0)
    torch.testing.assert_close(schedule.model_time(t), t * 1000)
    x_hat, eps_hat = schedule.split(eps - x0, schedule.noisy(x0, eps, t), t)
    torch.testing.assert_close(x_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_schedule_rejects_a_mismatched_parameterisation():
    with pytest.raises(ValueError, match="cannot train"):
        Schedule("flow", 1000, parameterization="epsilon")


def test_ddim_grid_matches_the_scheduler():
    scheduler = ddim()
    schedule = Schedule.from_scheduler(scheduler)
    grid = schedule.grid(10)
    assert grid[:-1].tolist() == scheduler.timesteps.tolist() and grid[-1] == -1
    assert Schedule.linear(100).grid(10).tolist() == grid.tolist()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_step_is_the_schedulers_step_per_sample(prediction_type, eta):
    scheduler = ddim(prediction_type)
    schedule = Schedule.from_scheduler(scheduler)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x, prediction = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    for t in (90, 50, 10):
        zero = scheduler.step(prediction, t, x, eta=eta, variance_noise=torch.zeros_like(x)).prev_sample
        one = scheduler.step(prediction, t, x, eta=eta, variance_noise=torch.ones_like(x)).prev_sample
        mean, std = ddim_step(prediction, x, torch.full((3,), t), torch.full((3,), t - 10), schedule, eta)
        torch.testing.assert_close(mean, zero, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(std, (one - zero).flatten(1).mean(1), rtol=1e-5, atol=1e-6)
    # Different times in one batch give each sample its own scheduler step.
    mean, _ = ddim_step(prediction, x, torch.tensor([90, 50, 10]), torch.tensor([80, 40, 0]), schedule, eta)
    for i, t in enumerate((90, 50, 10)):
        single = scheduler.step(prediction[i:i + 1], t, x[i:i + 1], eta=eta,
                                variance_noise=torch.zeros_like(x[i:i + 1])).prev_sample
        torch.testing.assert_close(mean[i:i + 1], single, rtol=1e-5, atol=1e-5)


def test_step_logprob_refuses_a_deterministic_step():
    schedule = Schedule.linear(100)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="no density"):
        step_logprob(x, x, x, torch.tensor([50, 50]), torch.tensor([40, 40]), schedule, noise=0.0)


def test_denoise_error_reductions_and_the_model_call():
    schedule = Schedule.linear(100)
    calls = []

    def model(x_t, time, cond):
        calls.append((time.tolist(), cond))
        return torch.zeros_like(x_t)

    x0, eps = torch.randn(2, 3, 2), torch.randn(2, 3, 2)
    error, prediction = denoise_error(model, x0, "c", torch.tensor([3, 7]), eps, schedule)
    assert calls == [([3, 7], "c")]
    torch.testing.assert_close(error, (eps ** 2).flatten(1).mean(1))
    summed, _ = denoise_error(model, x0, "c", torch.tensor([3, 7]), eps, schedule, reduction="sum")
    torch.testing.assert_close(summed, (eps ** 2).flatten(1).sum(1))
    with pytest.raises(ValueError, match="reduction"):
        reduce_dims(eps, "max")


def test_inversion_moves_each_sample_only_below_its_own_time():
    schedule = Schedule.linear(1000)
    grid = inversion_grid(schedule, 5)
    assert grid.tolist() == [0, 200, 400, 600, 800]
    seen = []

    def model(x, time, cond):
        seen.append(time.tolist())
        return torch.ones_like(x)

    x0 = torch.zeros(2, 3)
    x_t, target = renoise_invert(model, x0, None, torch.tensor([150, 650]), schedule, steps=5)
    # Both samples take level 0; only the second goes on to 200, 400, 600 (two calls per level: ReNoise).
    assert len(seen) == 2 * 4
    a, s = schedule.coefficients(torch.tensor([150, 650]))
    torch.testing.assert_close(a[:, None] * x0 + s[:, None] * target, x_t)
    first_only, _ = renoise_invert(model, x0, None, torch.tensor([150, 150]), schedule, steps=5)
    torch.testing.assert_close(first_only[0], x_t[0])
