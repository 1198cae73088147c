"""Preference tuning of diffusion and flow models (diffusion.md; `preftune diffusion ...`).

Layers, bottom up. The pure parts sit on the methods layer and import nothing above it:
`records` (what a method sees of a model), `schedules` and `primitives` (the two quantities every
method composes, `denoise_error` and `step_logprob`), `inversion` (SmPO's ReNoise inversion),
`tabular_ar` (DDO's exact autoregressive check) and `methods/` (the losses, registered with the
same registry as the language-model methods, family "diffusion"). The rest (models, toys, data,
rewards, sampling, the training loop, the command) sits on the loops' layer.

Importing this package imports nothing heavy: diffusers is loaded only by the modules that need it.
"""
