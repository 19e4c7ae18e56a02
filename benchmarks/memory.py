"""XLA temp memory of the compiled training steps, and its growth with depth.

`temp_bytes` comes from `jax.jit(step).lower(...).compile().memory_analysis()`:
the scratch memory of the step besides its arguments and outputs. Models are only
traced as shapes, so the deep models are never allocated.

Every table is measured twice: with XLA's default CPU scheduler, which favours
concurrency and runs the whole primal chain of a jvp before its tangent chain (so
every layer's activations are alive at once, as in backprop), and with XLA's
memory-optimised CPU scheduler (`MEMORY_OPTIMIZED`, below), which interleaves them.
"""

from typing import Any

import equinox as eqx
import jax

from ._setups import DISTRIBUTIONS, Setup, fwd_name, mlp_setup, num_params, train_step
from ._timing import compiled_memory


BASELINE = "backprop-sgd"
VARIANTS = ("backprop-sgd", "seed-recipe", *(fwd_name(d, 1) for d in DISTRIBUTIONS))
QUICK_VARIANTS = ("backprop-sgd", fwd_name("lowrank", 1))
# Also settable for a whole process:
# XLA_FLAGS=--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED
MEMORY_OPTIMIZED = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def step_memory(
    setup: Setup, name: str, compiler_options: dict[str, str] | None = None
) -> dict[str, int]:
    step = train_step(name)
    model = setup.model_shape()
    opt_state = eqx.filter_eval_shape(step.init, model)
    key = jax.eval_shape(jax.random.key, 0)
    batch = setup.batch_shape()
    return compiled_memory(
        step, model, opt_state, batch, key, compiler_options=compiler_options
    )


def memory_table(
    setup: Setup,
    variants: tuple[str, ...],
    compiler_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    table = {name: step_memory(setup, name, compiler_options) for name in variants}
    base = table[BASELINE]["temp_bytes"]
    for row in table.values():
        row["temp_ratio_to_backprop"] = row["temp_bytes"] / max(base, 1)
    return {
        "description": setup.description,
        "num_params": num_params(setup.model_shape()),
        "variants": table,
    }


def tables(quick: bool, compiler_options: dict[str, str] | None) -> dict[str, Any]:
    """The paper MLP, and an MLP of growing depth (width 2048, batch 512)."""
    width, batch = (16, 4) if quick else (2048, 512)
    depths = (2,) if quick else (2, 4, 8, 16)
    variants = QUICK_VARIANTS if quick else VARIANTS
    paper = mlp_setup("paper-mlp", 16 if quick else 1024, 2, 4 if quick else 64)
    # A model and batch size described alike are measured once (with --quick, the
    # paper MLP is also the depth-2 MLP).
    measured: dict[str, dict[str, Any]] = {}

    def measure(setup: Setup) -> dict[str, Any]:
        if setup.description not in measured:
            measured[setup.description] = memory_table(
                setup, variants, compiler_options
            )
        return measured[setup.description]

    results: dict[str, Any] = {"paper-mlp": measure(paper), "depth": {}}
    for depth in depths:
        setup = mlp_setup(f"mlp-depth{depth}", width, depth, batch)
        print(f"[memory] {setup.description}, {compiler_options}", flush=True)
        results["depth"][str(depth)] = measure(setup)
    for label, table in [("paper-mlp", results["paper-mlp"])] + [
        (f"depth {d}", t) for d, t in results["depth"].items()
    ]:
        cells = ", ".join(
            f"{name} {row['temp_bytes'] / 2**20:.1f} MiB"
            for name, row in table["variants"].items()
        )
        print(f"  {label}: {cells}", flush=True)
    return results


def run(quick: bool = False) -> dict:
    results = tables(quick, None)
    results["memory_optimized"] = tables(quick, MEMORY_OPTIMIZED)
    results["memory_optimized"]["compiler_options"] = MEMORY_OPTIMIZED
    return results
