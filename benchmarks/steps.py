"""Per-step time of backprop, the seed paper's recipe and fwdeqx forward gradients.

All variants of one model are timed in one process, round-robin, and reported as
ratios to the backprop SGD step measured alongside them.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax

from ._setups import (
    DISTRIBUTIONS,
    CallRunner,
    Setup,
    StepRunner,
    cnn_setup,
    forward_only,
    fwd_name,
    jvp_only,
    key_cycle,
    mlp_setup,
    num_params,
    random_bits_only,
    sample_only,
    sgd_update_only,
    train_step,
    zeros_like_params,
)
from ._timing import time_round_robin


BASELINE = "backprop-sgd"


@dataclasses.dataclass(frozen=True)
class Plan:
    setup: Setup
    variants: tuple[str, ...]  # train steps, plus `forward`
    diagnostics: tuple[str, ...]  # distributions whose pieces are timed alone
    steps: int
    warmup: int
    sample_many: bool = False  # also time drawing 16 Gaussian tangents alone
    block: int = 1  # consecutive calls of one variant per round


def plans(quick: bool) -> list[Plan]:
    if quick:  # a smoke run: the code paths once, on tiny models
        paper_variants = (
            "forward",
            "backprop-sgd",
            "seed-recipe",
            fwd_name("gaussian", 1),
            fwd_name("gaussian_hash", 1),
            fwd_name("lowrank", 1),
            fwd_name("lowrank", 4),
        )
        small_variants = ("backprop-sgd", fwd_name("lowrank", 1))
        return [
            Plan(
                mlp_setup("paper-mlp", 16, 2, 4),
                paper_variants,
                ("gaussian",),
                2,
                1,
                sample_many=True,
            ),
            Plan(cnn_setup("cnn", 2, 4, 2), small_variants, (), 2, 1),
        ]
    # Steps of ~2 ms and of ~400 ms timed in one round-robin disturb each other (the
    # big ones evict caches and return their buffers to the OS), so the paper MLP's
    # single-tangent steps and its K-tangent steps are two groups, each with its own
    # backprop baseline, and each variant runs 10 consecutive steps per round.
    paper_variants = (
        "forward",
        "backprop-sgd",
        "backprop-adam",
        "seed-recipe",
        *(fwd_name(d, 1) for d in DISTRIBUTIONS),
    )
    multi_variants = (
        "backprop-sgd",
        *(fwd_name(d, k) for d in DISTRIBUTIONS for k in (1, 4, 16)),
    )
    k1_variants = (
        "forward",
        "backprop-sgd",
        "seed-recipe",
        *(fwd_name(d, 1) for d in DISTRIBUTIONS),
        fwd_name("lowrank", 4),
    )
    every = tuple(DISTRIBUTIONS)
    paper = mlp_setup("paper-mlp", 1024, 2, 64)
    multi = dataclasses.replace(paper, name="paper-mlp-k-tangents")
    return [
        Plan(paper, paper_variants, every, 150, 3, block=10),
        Plan(multi, multi_variants, (), 60, 2, sample_many=True, block=10),
        Plan(cnn_setup("cnn", 64, 28, 64), k1_variants, (), 8, 1),
        Plan(mlp_setup("deep-mlp", 2048, 8, 512), k1_variants, (), 6, 1),
    ]


def runners_for(plan: Plan, key: jax.Array) -> dict[str, Any]:
    model_key, batch_key, step_key = jax.random.split(key, 3)
    model = plan.setup.model(model_key)
    batch = plan.setup.batch(batch_key)
    runners: dict[str, Any] = {}
    for name in plan.variants:
        if name == "forward":
            runners[name] = CallRunner(forward_only, model, batch)
        else:
            runners[name] = StepRunner(
                train_step(name), model, batch, key_cycle(step_key)
            )
    like = eqx.filter(model, eqx.is_inexact_array)
    if plan.diagnostics:
        grads = zeros_like_params(model)
        runners["diag: sgd update only"] = CallRunner(sgd_update_only, model, grads)
        if plan.steps > 10:  # not in the smoke run
            runners["diag: random bits only (32/param)"] = CallRunner(
                random_bits_only, step_key, like
            )
        for name in plan.diagnostics:
            sampler = sample_only(DISTRIBUTIONS[name], 1)
            runners[f"diag: sample {name}"] = CallRunner(sampler, step_key, like)
            if plan.steps > 10:
                tangent = sampler(step_key, like)
                runners[f"diag: jvp given {name} tangent"] = CallRunner(
                    jvp_only, model, batch, tangent
                )
    if plan.sample_many:
        for name in ("gaussian", "gaussian_hash"):
            sampler16 = sample_only(DISTRIBUTIONS[name], 16)
            runners[f"diag: sample {name} x16"] = CallRunner(sampler16, step_key, like)
    return runners


def add_ratios(timings: dict[str, dict[str, float]]) -> None:
    base = timings[BASELINE]["median_ms"]
    for name, timing in timings.items():
        timing["ratio_to_backprop"] = timing["median_ms"] / base
        if name.startswith("fwd-") and not name.endswith("-k1"):
            single = timings.get(name.rsplit("-", 1)[0] + "-k1")
            if single is not None:
                timing["ratio_to_k1"] = timing["median_ms"] / single["median_ms"]


def run(quick: bool = False) -> dict:
    results: dict[str, Any] = {}
    for index, plan in enumerate(plans(quick)):
        runners = runners_for(plan, jax.random.key(index))
        print(
            f"[steps] {plan.setup.name}: {plan.setup.description}, "
            f"{len(runners)} variants x {plan.steps} rounds",
            flush=True,
        )
        timings = time_round_robin(
            runners, steps=plan.steps, warmup=plan.warmup, block=plan.block
        )
        add_ratios(timings)
        for name, timing in timings.items():
            print(
                f"  {name:34s} {timing['median_ms']:9.3f} ms "
                f"(IQR {timing['iqr_ms']:.3f})  x{timing['ratio_to_backprop']:.2f}",
                flush=True,
            )
        results[plan.setup.name] = {
            "description": plan.setup.description,
            "num_params": num_params(plan.setup.model_shape()),
            "rounds": plan.steps // plan.block,
            "block": plan.block,
            "warmup_rounds": plan.warmup,
            "baseline": BASELINE,
            "timings": timings,
        }
        del runners
    return results
