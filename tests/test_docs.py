"""Statements in docs/ that describe other projects' code, checked against what that code does."""
from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_egpo_note_describes_the_official_training_step():
    # EGPO's official ExtragradientTrainer.training_step (zhourunlong/EGPO) generates the full step's
    # samples at theta_{t+1/2}, then copies theta_t and the optimizer state back before it computes the
    # log-probs and backpropagates: the gradient is taken at theta_t, as preftune does. An earlier note
    # said the official code evaluates it at theta_{t+1/2}.
    text = " ".join((DOCS / "online.md").read_text().split())
    note = text[text.index("EGPO uses the variance-reduced target"):]
    note = note[:note.index("- The judge")]
    assert not re.search(r"code evaluates the full-step gradient at θ_\{t\+½\}", note)
    assert "samples at θ_{t+½}, then restores θ_t and the optimizer state before it computes the log-probs" in note
