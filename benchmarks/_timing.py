"""Timing, lowering and environment helpers shared by the benchmark suites."""

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median and spread of per-step times, in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return {
        "median_ms": float(median),
        "q1_ms": float(q1),
        "q3_ms": float(q3),
        "iqr_ms": float(q3 - q1),
        "min_ms": float(ms.min()),
        "n": len(ms),
    }


def time_round_robin(
    runners: dict[str, Callable[[], Any]], *, steps: int, warmup: int, block: int = 1
) -> dict[str, dict[str, float]]:
    """Time every runner `steps` times, in rounds of `block` consecutive calls each.

    Rounds alternate their order (forwards, then backwards) so that slow drift of the
    machine (other processes, thermal state) hits every variant alike; ratios of
    medians from one call of this function are therefore comparable. Consecutive
    calls of one variant (`block` > 1) measure the steady state a training loop
    runs in: a ~2 ms step timed right after a ~400 ms one runs with cold caches and
    freshly mapped memory. Each call is synchronised with `jax.block_until_ready`;
    `warmup` rounds (compilation included) are not recorded.
    """
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(runners[name]())
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(max(steps // block, 1)):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            for _ in range(block):
                start = time.perf_counter()
                jax.block_until_ready(runners[name]())
                samples[name].append(time.perf_counter() - start)
    return {name: summarize(samples[name]) for name in names}


def median_of_self_timed(
    runners: dict[str, Callable[[], float]], rounds: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds of runners that time themselves (each call returns its own
    seconds), after one untimed call each, over `rounds` interleaved rounds in
    alternating order. Returns the medians and every round's seconds."""
    for runner in runners.values():  # first calls compile and allocate
        runner()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(rounds):
        names = list(runners) if round_index % 2 == 0 else list(runners)[::-1]
        for name in names:
            samples[name].append(runners[name]())
    medians = {name: float(np.median(values)) for name, values in samples.items()}
    return medians, samples


def _is_array_like(leaf: object) -> bool:
    return isinstance(leaf, jax.Array | jax.ShapeDtypeStruct)


def compiled_memory(
    fn: Callable, *args: Any, compiler_options: dict[str, str] | None = None
) -> dict[str, int]:
    """XLA's memory analysis of `fn(*args)` compiled as one program.

    Arrays may be given as `jax.ShapeDtypeStruct`s (e.g. from `eqx.filter_eval_shape`)
    so that large models need not be allocated. `temp_bytes` is the scratch memory
    the program needs besides its arguments and outputs. `compiler_options` are XLA
    debug options for this compilation only (e.g. the CPU scheduler).
    """
    dynamic, static = eqx.partition((fn, args), _is_array_like)

    def pure(dynamic):
        fn_, args_ = eqx.combine(dynamic, static)
        return eqx.filter(fn_(*args_), eqx.is_array)

    compiled = jax.jit(pure, compiler_options=compiler_options).lower(dynamic).compile()
    analysis = compiled.memory_analysis()
    return {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
    }


def environment() -> dict[str, Any]:
    """The machine and versions as the experiments record them
    (`experiments.runner.environment`), plus the settings that change timings."""
    from experiments import runner

    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        **runner.environment(),
        "machine": platform.machine(),
        "usable_cpus": usable_cpus,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": runner.versions(),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "env": {
            name: os.environ.get(name)
            for name in (
                "XLA_FLAGS",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "JAX_ENABLE_X64",
                "JAX_PLATFORMS",
            )
        },
    }
