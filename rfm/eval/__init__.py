"""Closed-loop evaluation in simulation."""

from rfm.eval.compare import compare, format_comparison
from rfm.eval.evaluate import evaluate, format_table

__all__ = ["compare", "evaluate", "format_comparison", "format_table"]
