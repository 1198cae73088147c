"""The claim experiments, one module per family of rows; importing this package registers them all."""
from preftune.claims.rows import baselines  # noqa: F401  (arms shared by several rows)
from preftune.claims.rows import length, data_quality, token_level, single_stage, objectives  # noqa: F401
from preftune.claims.rows import analysis, overopt, online  # noqa: F401
