"""Every registered claim experiment, in table order: importing this module imports every row module."""
from __future__ import annotations

import preftune.claims.rows  # noqa: F401  (registers every row)
from preftune.claims.registry import FAMILIES, Claim, registered


def all_claims() -> list[Claim]:
    order = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(registered().values(), key=lambda c: (order[c.family], c.sort_key))


def get_claim(row: str) -> Claim:
    claims = {c.row: c for c in all_claims()}
    if row not in claims:
        raise KeyError(f"claims: no experiment for catalogue row {row!r}; rows: {', '.join(claims)}")
    return claims[row]
