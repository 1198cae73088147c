"""DPO on each task: the baseline most rows compare with, defined once so that its cells run once.

DPO's β grid and the shared learning-rate grid are every reference-anchored arm's too. On
arithmetic, DPO also logs the 3D-properties likelihood trajectories (teacher-forced, every 25
steps; measuring changes nothing in training) and the diversity of its samples, since it is the
reverse-KL member of the f-DPO family (fdpo with divergence reverse_kl is DPO exactly, a check of
`preftune verify fdpo`).
"""
from __future__ import annotations

from preftune.claims.arms import DPO_BETAS, arm

LIKELIHOOD_TRAJECTORIES = {"every": 25, "prompts": 0, "examples": 64}   # teacher-forced only: cheap

DPO_ARITHMETIC = arm("dpo@arithmetic", "arithmetic", "dpo", grid=DPO_BETAS, diagnostics=LIKELIHOOD_TRAJECTORIES,
                     extra_metrics=("entropy",))
DPO_LENGTH = arm("dpo@length-bias", "length-bias", "dpo", grid=DPO_BETAS)
DPO_NOISY = arm("dpo@noisy-labels", "noisy-labels", "dpo", grid=DPO_BETAS)
DPO_MARGINS = arm("dpo@mixed-margins", "mixed-margins", "dpo", grid=DPO_BETAS)
DPO_MULTISTEP = arm("dpo@multistep", "multistep", "dpo", grid=DPO_BETAS, keep_model=True)
DPO_SAFETY = arm("dpo@safety", "safety", "dpo", grid=DPO_BETAS)
DPO_BASE = arm("dpo-from-base@arithmetic", "arithmetic", "dpo", grid=DPO_BETAS, start="base")
