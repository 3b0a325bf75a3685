"""Solvers built on the ops: log-domain Sinkhorn (and, later, semidiscrete potentials)."""

from ot_flow.solvers.sinkhorn import SinkhornResult, sinkhorn

__all__ = ["SinkhornResult", "sinkhorn"]
