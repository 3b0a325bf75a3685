"""Solvers built on the ops: log-domain Sinkhorn (sinkhorn.py), costs and their spread (costs.py)."""
