"""Seeds per second: S runs of one grid cell batched against one at a time.

What `python -m experiments.mnist_compare` does with `--batch-runs S` against
`--batch-runs 1`, on the paper MLP (784-1024-1024-10, SGD, batch 64), S = 5 seeds:

- `alone`: the experiment's single-run chunk (`_mnist_train._prepare`'s, `steps` steps
  in one `lax.scan`) called once per seed, one seed after the other;
- `batched`: the experiment's batched chunk (`_mnist_batched.make_batched_chunk_fn`)
  called once for all S seeds.

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
    from experiments import _mnist_batched, _mnist_train

    from fwdeqx import data

    from .loop import _synthetic_dataset

    dataset = _synthetic_dataset(4096, 64)
    shared = {"dataset": "synthetic", "model": model, "optimizer": "sgd",
              "lr": 1e-4, "estimator": estimator, "iterations": steps,
              "eval_every": steps}  # fmt: skip
    configs = [_mnist_train.RunConfig(seed=seed, **shared) for seed in range(seeds)]
    cache: dict = {}  # the seeds share one jitted chunk, as in the experiment
    prepared = [
        _mnist_train._prepare(c, dataset, data.to_float, cache) for c in configs
    ]
    layout = configs[0].layout()
    chunks = [
        next(_mnist_train.run_chunks(c, dataset, data.batches, layout)) for c in configs
    ]
    single = prepared[0].chunk_fn  # the single-run chunk of the experiment
    batched = _mnist_batched.make_batched_chunk_fn(configs[0], prepared[0].static)
    stack = _mnist_batched._stack
    start = jnp.int32(0)
    # The chunks donate their state: every call gets fresh copies.
    alone_args = [
        (p.params, p.opt_state, jnp.asarray(xs), jnp.asarray(ys), p.train_key, start)
        for p, (xs, ys) in zip(prepared, chunks, strict=True)
    ]
    batched_args = (
        stack([p.params for p in prepared]),
        stack([p.opt_state for p in prepared]),
        jnp.ones(seeds, bool),
        jnp.full(seeds, jnp.inf, jnp.float32),
        jnp.full(seeds, 1e-4, jnp.float32),
        jnp.asarray(np.stack([xs for xs, _ in chunks], axis=1)),
        jnp.asarray(np.stack([ys for _, ys in chunks], axis=1)),
        jnp.stack([p.train_key for p in prepared]),
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
