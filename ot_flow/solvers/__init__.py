"""Solvers on the ops (the second floor: may import ``ot_flow.ops`` and ``ot_flow.distributed``).

- Sinkhorn: the API and its checks (``sinkhorn``), the loop at one eps (``sinkhorn_iterations``),
  its half-steps per placement (``sinkhorn_halves``), the result and what is read off it
  (``sinkhorn_result``), where a result's rows and columns live (``placement``), the problem in
  its working frame (``working_problem``, ``frame``); costs and their spread (``costs``).
- Batched Sinkhorn (B problems of equal sizes in one call, x (B, n, d)): the branch of
  ``sinkhorn`` (``sinkhorn_batched``), its loop (``sinkhorn_batched_iterations``) and result
  (``sinkhorn_batched_result``).
- Built on it: symmetric OT(a, a) (``symmetric``), the Sinkhorn divergence (``divergence``), the
  Sinkhorn-flow velocity (``flow_velocity``); the exact assignment (``assignment``).
- Semidiscrete: the semi-dual, its gradient and the hard or soft assignment (``semidiscrete``),
  the diagonal Newton step (``semidual_newton``).
- One home for shared rules: merging partial results over chunks and ranks (``merge_rules``),
  the argument checks of this floor and the samplers' (``validation``), precision and progress
  (``full_precision``, ``progress``).
"""
