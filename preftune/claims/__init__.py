"""`preftune claims`: each catalogue row's paper claim, run in miniature and judged (docs/claims.md).

stats.py holds the statistics and the decision rule; config.py the settings (the pre-registration);
arms.py an arm (one method under one condition, searched then run on every seed); rows/ one module
per family of rows, each defining its arms and registering its claims (registry.py, catalogue.py);
assets.py, cells.py, online_cells.py and extras.py run the work, runner.py the whole run, evidence.py
what a row's judge reads, report.py the Markdown.
"""
