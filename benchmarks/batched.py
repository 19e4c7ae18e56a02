"""Seeds per second: S runs of one grid cell batched against one at a time.

What `python -m experiments.mnist_compare` does with `--batch-runs S` against
`--batch-runs 1`, on the paper MLP (784-1024-1024-10, SGD, batch 64), S = 5 seeds:

- `alone`: the experiment's single-run chunk (`experiments.runner.make_chunk_fn`,
  `steps` steps in one `lax.scan`) called once per seed, one seed after the other;
- `batched`: the experiment's batched chunk
  (`experiments.runner.make_batched_chunk_fn`) called once for all S seeds.

Both are compiled before timing and timed in interleaved rounds (alternating
order) in one process; `seed_steps_per_s = S * steps / seconds`, and
`batched_over_alone` is the ratio of those rates (> 1: batching is faster).
Evaluation and data loading are the same work either way and are left out.
`run()` writes no files.
"""

import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._timing import median_of_self_timed


ESTIMATORS = ("backprop", "fwd-gaussian", "fwd-gaussian-hash")


def _runners(estimator: str, model: str, seeds: int, steps: int) -> dict[str, Any]:
    from experiments import registry, runner

    import fwdeqx
    from fwdeqx import models

    from .loop import _synthetic_dataset, run_setup

    dataset = _synthetic_dataset(4096, 64)
    cache = runner.Cache()  # the seeds share one jitted chunk, as in the experiment
    setups = [
        run_setup(estimator, model, dataset, cache, seed=seed, steps=steps, lr=1e-4)
        for seed in range(seeds)
    ]
    trainings = [setup["training"] for setup in setups]
    chunks = [setup["chunk"] for setup in setups]
    single = trainings[0].program.fn  # the single-run chunk of the experiment
    batched = runner.make_batched_chunk_fn(
        lambda lr: fwdeqx.make_step(
            lambda m, b: models.cross_entropy(m, *b),
            registry.make_optimizer("sgd", lr),
            registry.make_estimator(estimator),
        ),
        setups[0]["static"],
    )
    start = jnp.int32(0)
    # The chunks donate their state: every call gets fresh copies.
    alone_args = [
        (t.carry, t.consts, jnp.asarray(xs), jnp.asarray(ys), start)
        for t, (xs, ys) in zip(trainings, chunks, strict=True)
    ]
    batched_args = (
        (
            runner.stack([t.carry[0] for t in trainings]),
            runner.stack([t.carry[1] for t in trainings]),
            jnp.ones(seeds, bool),
            jnp.full(seeds, jnp.inf, jnp.float32),
        ),
        (jnp.full(seeds, 1e-4, jnp.float32), jnp.stack([t.consts for t in trainings])),
        jnp.asarray(np.stack([xs for xs, _ in chunks], axis=1)),
        jnp.asarray(np.stack([ys for _, ys in chunks], axis=1)),
        start,
    )

    def fresh(args):
        return jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, args)

    single_compiled = single.lower(*alone_args[0]).compile()
    batched_compiled = batched.lower(*batched_args).compile()

    def alone() -> float:
        copies = [fresh(args) for args in alone_args]
        jax.block_until_ready(copies)
        begin = time.perf_counter()
        for args in copies:
            jax.block_until_ready(single_compiled(*args))
        return time.perf_counter() - begin

    def together() -> float:
        copies = fresh(batched_args)
        jax.block_until_ready(copies)
        begin = time.perf_counter()
        jax.block_until_ready(batched_compiled(*copies))
        return time.perf_counter() - begin

    return {"alone": alone, "batched": together}


def _measure(estimator: str, model: str, seeds: int, steps: int, rounds: int):
    runners = _runners(estimator, model, seeds, steps)
    seconds, samples = median_of_self_timed(runners, rounds)
    rates = {name: seeds * steps / value for name, value in seconds.items()}
    return {
        "seconds": seconds,
        "seed_steps_per_s": rates,
        "ms_per_seed_step": {k: 1e3 / v for k, v in rates.items()},
        "batched_over_alone": rates["batched"] / rates["alone"],
        "samples_s": samples,
    }


def run(quick: bool = False) -> dict:
    """Measure batched against one-at-a-time training; returns a JSON-ready dict."""
    model, seeds, steps, rounds = ("logreg", 2, 10, 2) if quick else ("mlp", 5, 50, 5)
    result: dict[str, Any] = {
        "name": "batched",
        "quick": quick,
        "device": str(jax.devices()[0].device_kind),
        "model": model,
        "optimizer": "sgd",
        "batch_size": 64,
        "seeds": seeds,
        "steps_per_chunk": steps,
        "rounds": rounds,
        "estimators": {},
    }
    with jax.numpy_dtype_promotion("standard"):
        for estimator in ESTIMATORS:
            row = _measure(estimator, model, seeds, steps, rounds)
            result["estimators"][estimator] = row
            ms = row["ms_per_seed_step"]
            print(
                f"[batched] {estimator}, S={seeds}: alone {ms['alone']:.2f} ms, "
                f"batched {ms['batched']:.2f} ms per seed-step; batched/alone "
                f"seeds per second {row['batched_over_alone']:.2f}",
                flush=True,
            )
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
