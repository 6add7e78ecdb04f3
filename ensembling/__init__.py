"""Helpers of ``ensemble.py``: score files, fusion, metrics, the paper's tables, plots.

Import the public API from ``ensemble`` (the top-level module and CLI); the modules here
hold one concept each.
"""
