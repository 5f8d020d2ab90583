"""Evaluation of finished runs: one door from a checkpoint back to objects (``load_run``), and the
commands built on it (eval, explain, report, diagnostics, cross-eval)."""
from .run import Run, load_run

__all__ = ["Run", "load_run"]
