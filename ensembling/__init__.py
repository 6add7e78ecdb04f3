"""Helpers of ``ensemble.py``: score files, run directories, fusion, metrics, tables, plots,
and what goes beyond the paper: selection, calibration and confidence intervals.

Import the public API from ``ensemble`` (the top-level module and CLI), or the beyond-the-
paper functions from their modules (``selection``, ``calibration``, ``bootstrap`` on arrays;
``heldout``, ``intervals``, ``logs`` on runs); the modules here hold one concept each. The
trainer uses this package (never the reverse): it writes and re-reads score files with
``score_files.write_score_file`` / ``read_score_file`` and summarises with
``fusion.sum_rule_accuracy`` and ``tables.accuracy_mean_and_std``. The run directory's
contract (layout, ``config.json``, provenance) is ``rundir``'s, below both.
"""
