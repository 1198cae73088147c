"""Evaluation: gold metrics on built-in tasks, win-rates, KL estimates, diagnostics."""
