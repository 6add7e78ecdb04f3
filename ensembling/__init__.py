"""Helpers of ``ensemble.py``: score files, run directories, fusion, metrics, tables, plots.

Import the public API from ``ensemble`` (the top-level module and CLI); the modules here
hold one concept each. The trainer uses this package (never the reverse): it writes and
re-reads score files with ``score_files.write_score_file`` / ``read_score_file`` and
summarises with ``fusion.sum_rule_accuracy`` and ``tables.accuracy_mean_and_std``.
"""
