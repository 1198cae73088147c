"""Plots (matplotlib PNGs) and reports of runs."""
