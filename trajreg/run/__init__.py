"""Runs: train with the reference loop, record, analyse, write a run directory."""

from trajreg.run.runner import analyze, run

__all__ = ["analyze", "run"]
