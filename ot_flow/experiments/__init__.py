"""The experiment harness behind ``python -m ot_flow demo | train | eval | compare``: an
experiment is a YAML config (``config``); the runner (``runner``) trains each of its methods into a
run directory (``runs``: checkpoints, logs, resumable), NSGF / NSGF++ included (``nsgf_training``),
evaluates them with the papers' metrics and puts them side by side in a table and plots
(``plots``).

This is the top floor: it may import the libraries below it (``ot_flow.flow``, ``ot_flow.nsgf``,
``ot_flow.samplers``, ``ot_flow.solvers``, ``ot_flow.data``, ``ot_flow.ops``) and is imported
only by the command line (``ot_flow.cli``). Nothing is imported here, so that
``ot_flow.experiments.config`` stays importable without the compiled extension; import the
modules themselves.
"""
