"""fwdeqx benchmark suite: `python -m benchmarks [--quick]` (or `nox -s bench`).

Suites (each a module exposing `run(quick: bool = False) -> dict`):

- `steps`: per-step time of the forward pass, backprop steps, the seed paper's recipe
  and every fwdeqx tangent distribution, as ratios to the backprop step.
- `memory`: XLA temp bytes of the compiled steps, and their growth with depth.
- `quality`: the estimator's relative error E‖g − ∇f‖²/‖∇f‖².
- `pipeline`, `loop`, `distributed`: owned by other benchmarks, run when present.
"""
