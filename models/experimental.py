"""Experimental modules (YOLOv5 v6.0's location of Ensemble and attempt_load; both live in
models/checkpoint.py, next to the weight loader that builds ensembles)."""

from models.checkpoint import Ensemble, attempt_load

__all__ = ["Ensemble", "attempt_load"]
