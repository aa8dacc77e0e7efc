"""Closed-loop evaluation in simulation."""

from rfm.eval.evaluate import evaluate, format_table

__all__ = ["evaluate", "format_table"]
