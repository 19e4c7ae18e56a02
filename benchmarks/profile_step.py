"""Where one jitted training step of a `fwdeqx.local` network spends its time, by
operation category (issue 22: do XLA's CPU convolutions bound the CNN's speed?).

`python -m benchmarks.profile_step [--model M ...] [--method E ...] [--batch 64]
[--steps 10] [--out FILE]` builds each network and method exactly as the `local`
suite does (`benchmarks.local`'s plans and `METHODS`, with its SGD step), compiles
the step, and maps every HLO instruction of the compiled program to a category
(convolution, max pooling, matmul, random numbers, elementwise and other) by its
`op_name` metadata (see `categorize`). It then runs `--steps` steps under
`jax.profiler.trace` and sums, per category, the durations of the trace's leaf
events that are instructions of this program, divided by the number of steps. The
wall time per step (median of timed steps outside the profiler) and the achieved
GFLOP/s (`cost_analysis` flops over wall time) are reported alongside. Caveats: on
CPU the trace records XLA's thunk executor, one event per top-level instruction
(a fusion counts under the category of its root operation; instructions XLA made
without metadata are attributed as `instruction_categories` says), so shares are
of the total XLA op time, not of the wall time: the op time is summed over the
threads that run independent thunks concurrently (it can exceed the wall time),
and the wall time also holds dispatch and idle waits; the profiler itself slows
small ops a little.
"""

import argparse
import dataclasses
import gzip
import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax

import fwdeqx

from .local import METHODS, plans


MODELS = {  # --model name: the `local` suite's plan
    "location-cnn": "location-cnn",
    "cnn": "cnn-locations",
    "location-mixer": "location-mixer",
    "mlp": "mlp-groups",
}
DEFAULT_MODELS = ("location-cnn", "cnn", "location-mixer")
DEFAULT_METHODS = ("backprop", "lg-fg-a-rademacher")
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (  # by prefix of the op name
    ("convolution", ("conv_general_dilated",)),
    ("max pooling", ("reduce_window", "select_and_scatter")),
    ("matmul", ("dot_general",)),
)
RANDOM = "random numbers"
_RANDOM = re.compile(r"(?:^|\()(?:random_|_?threefry)")  # in any op_name component
OTHER = "elementwise and other"
_OPCODES = {  # for instructions XLA generated without metadata
    "convolution": "convolution",
    "reduce-window": "max pooling",
    "select-and-scatter": "max pooling",
    "dot": "matmul",
    "rng-bit-generator": "random numbers",
}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?P<root>ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=(?P<rest>.*)$"
)
_OPCODE = re.compile(r"\b(?P<opcode>[a-z][a-z0-9\-]*)\(")
_OP_NAME = re.compile(r'op_name="(?P<op>[^"]*)"')
_CALLS = re.compile(r"\b(?:calls|body|condition)=%?(?P<name>[\w.\-]+)")
_TO_APPLY = re.compile(r"\bto_apply=%?(?P<name>[\w.\-]+)")
_OPERAND = re.compile(r"%(?P<name>[\w.\-]+)")


@dataclasses.dataclass
class _Instruction:
    opcode: str
    op_name: str | None
    operands: list[str]
    calls: list[str]
    reducers: list[str]


def categorize(op_name: str) -> str:
    """The category of an HLO instruction from its `op_name` metadata: by the last
    `/`-separated component, except that anything inside a random-number
    function (`random_bits`, `jit(_threefry_split)`, ...: their arithmetic is adds,
    xors and shifts) is "random numbers"."""
    components = op_name.split("/")
    for category, prefixes in _CATEGORIES:
        if components[-1].startswith(prefixes):
            return category
    if any(_RANDOM.search(component) for component in components):
        return RANDOM
    return OTHER


def instruction_categories(hlo_text: str) -> dict[str, str]:
    """Every instruction name of a compiled HLO module mapped to its category.

    An instruction is categorised by its own `op_name`; failing that (XLA drops
    the metadata of many fusions and of what its passes generate, e.g. the CPU
    expansion of `select_and_scatter` into iotas, a variadic `reduce-window` and a
    scatter) by the computations it calls (their root first), then by its opcode,
    then by the instructions that use its result, and else as "elementwise and
    other". A `reduce-window` without metadata is max pooling unless it sums.
    """
    instructions, computations = _parse_hlo(hlo_text)
    cache: dict[str, str | None] = {}

    def direct(name: str) -> str | None:
        if name not in cache:
            instruction = instructions[name]
            found = categorize(instruction.op_name) if instruction.op_name else None
            for called in instruction.calls:
                found = found or _pick([direct(i) for i in computations[called]])
            cache[name] = found or by_opcode(instruction)
        return cache[name]

    def by_opcode(instruction: _Instruction) -> str | None:
        roots = [instructions[computations[c][0]] for c in instruction.reducers]
        if any(root.opcode == "add" for root in roots):
            return OTHER  # a reduce-window that sums: XLA's split of a reduce_sum
        return _OPCODES.get(instruction.opcode)

    categories = {name: direct(name) for name in instructions}
    users: dict[str, list[str]] = {}
    for name, instruction in instructions.items():
        for operand in instruction.operands:
            users.setdefault(operand, []).append(name)
    changed = True
    while changed:
        changed = False
        for name, category in categories.items():
            found = [categories[user] for user in users.get(name, ())]
            inferred = next((c for c in found if c not in (None, OTHER)), None)
            if category is None and inferred is not None:
                categories[name], changed = inferred, True
    return {name: category or OTHER for name, category in categories.items()}


def _pick(candidates: list[str | None]) -> str | None:
    """The root's category (the first), else the first but "other", else "other"
    when any is known."""
    if not candidates or candidates[0] is not None:
        return candidates[0] if candidates else None
    known = [c for c in candidates if c is not None]
    return next((c for c in known if c != OTHER), known[0] if known else None)


def _parse_hlo(
    hlo_text: str,
) -> tuple[dict[str, _Instruction], dict[str, list[str]]]:
    """The instructions of an HLO module by name, and each computation's
    instruction names, its root first."""
    instructions: dict[str, _Instruction] = {}
    computations: dict[str, list[str]] = {}
    current: list[str] = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            header = _COMPUTATION.match(line)
            if header is not None:
                current = computations.setdefault(header.group("name"), [])
            continue
        rest = match.group("rest")
        opcode = _OPCODE.search(rest)
        op_name = _OP_NAME.search(rest)
        body = rest.split("metadata=", 1)[0]
        instructions[match.group("name")] = _Instruction(
            opcode=opcode.group("opcode") if opcode else "",
            op_name=op_name.group("op") if op_name else None,
            operands=_OPERAND.findall(body.split("calls=", 1)[0]),
            calls=_CALLS.findall(body),
            reducers=_TO_APPLY.findall(body),
        )
        if match.group("root"):
            current.insert(0, match.group("name"))
        else:
            current.append(match.group("name"))
    return instructions, computations


def leaf_op_microseconds(
    events: list[dict[str, Any]], categories: dict[str, str]
) -> dict[str, float]:
    """Total duration (µs) per category of the complete trace events named after an
    instruction in `categories` and enclosing no other such event on their thread
    (a `while` or `call` thunk is not counted on top of its body)."""
    ops = [e for e in events if e.get("ph") == "X" and e.get("name") in categories]
    ops.sort(key=lambda e: (e["pid"], e["tid"], e["ts"], -e["dur"]))
    leaf = [True] * len(ops)
    stack: list[int] = []
    for index, event in enumerate(ops):
        while stack and not _encloses(ops[stack[-1]], event):
            stack.pop()
        if stack:
            leaf[stack[-1]] = False
        stack.append(index)
    totals: dict[str, float] = {}
    for event, is_leaf in zip(ops, leaf, strict=True):
        if is_leaf:
            category = categories[event["name"]]
            totals[category] = totals.get(category, 0.0) + float(event["dur"])
    return totals


def _encloses(outer: dict[str, Any], inner: dict[str, Any]) -> bool:
    same_thread = (outer["pid"], outer["tid"]) == (inner["pid"], inner["tid"])
    return same_thread and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"]


def _trace_events(directory: str) -> list[dict[str, Any]]:
    paths = sorted(Path(directory).rglob("*perfetto_trace.json.gz"))
    if not paths:
        raise RuntimeError(f"jax.profiler.trace wrote no perfetto trace in {directory}")
    with gzip.open(paths[-1], "rt") as file:
        return json.load(file)["traceEvents"]


def _flops(compiled: Any) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    if not isinstance(analysis, dict) or analysis.get("flops", -1) <= 0:
        return None
    return float(analysis["flops"])


def profile_step(
    build: Callable[[jax.Array], eqx.Module],
    input_shape: tuple[int, ...],
    method: str,
    *,
    batch_size: int = 64,
    steps: int = 10,
    warmup: int = 2,
    num_classes: int = 10,
    key: jax.Array | None = None,
) -> dict[str, Any]:
    """Profile one jitted training step (`fwdeqx.make_step` with SGD) of a network.

    **Arguments:**

    - `build`: the network from a key, e.g. one of `benchmarks.local`'s plans.
    - `input_shape`: the shape of one example.
    - `method`: a key of `benchmarks.local.METHODS` (objective and estimator).
    - `batch_size`, `steps`, `warmup`: examples per step, profiled steps, and
        untimed steps first (after compilation).
    - `num_classes`: labels are drawn from `range(num_classes)`.
    - `key`: for the network, the batch and the steps' keys (default `key(0)`).

    **Returns:**

    A dict with `wall_ms` (median wall time of a step outside the profiler),
    `xla_ms` (XLA op time per profiled step), `categories` (category to `ms` and
    `share` of `xla_ms`, largest first), `flops` and `gflops_per_s` (`None` when
    XLA's cost analysis gives no flop count).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    key = jax.random.key(0) if key is None else key
    model_key, x_key, y_key, step_key = jax.random.split(key, 4)
    model = build(model_key)
    batch = (
        jax.random.normal(x_key, (batch_size, *input_shape)),
        jax.random.randint(y_key, (batch_size,), 0, num_classes),
    )
    objective, estimator = METHODS[method]()
    optimizer = optax.sgd(1e-3)
    step = fwdeqx.make_step(objective, optimizer, estimator)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    params, static = eqx.partition(model, eqx.is_array)
    jitted = jax.jit(
        lambda p, s, b, k: eqx.filter(
            step(eqx.combine(p, static), s, b, k), eqx.is_array
        )
    )
    keys = jax.random.split(step_key, warmup + 2 * steps + 5)
    compiled = jitted.lower(params, opt_state, batch, keys[0]).compile()
    hlo_text = compiled.as_text()
    if hlo_text is None:
        raise RuntimeError("the compiled step has no HLO text to categorise")
    categories = instruction_categories(hlo_text)
    calls = iter(keys)

    def run_once() -> float:
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, opt_state, batch, next(calls)))
        return time.perf_counter() - start

    for _ in range(warmup):
        run_once()
    wall_ms = 1e3 * float(np.median([run_once() for _ in range(max(steps, 5))]))
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(steps):
                run_once()
        totals = leaf_op_microseconds(_trace_events(directory), categories)
    xla_ms = sum(totals.values()) / 1e3 / steps
    flops = _flops(compiled)
    return {
        "wall_ms": wall_ms,
        "xla_ms": xla_ms,
        "categories": {
            name: {"ms": us / 1e3 / steps, "share": us / 1e3 / steps / xla_ms}
            for name, us in sorted(totals.items(), key=lambda item: -item[1])
        },
        "flops": flops,
        "gflops_per_s": None if flops is None else flops / (wall_ms * 1e6),
    }


def format_profile(model: str, method: str, profile: dict[str, Any]) -> str:
    """A profile as a small text table (see the module docstring)."""
    lines = [
        f"{model}, {method}: {profile['wall_ms']:.1f} ms/step "
        f"(XLA ops {profile['xla_ms']:.1f} ms)"
    ]
    for name, entry in profile["categories"].items():
        lines.append(f"  {name:22s} {entry['ms']:8.2f} ms  {entry['share']:4.0%}")
    if profile["flops"] is None:
        lines.append("  (no flop count from XLA's cost analysis)")
    else:
        lines.append(
            f"  {profile['flops'] / 1e9:.3f} GFLOP/step, "
            f"{profile['gflops_per_s']:.1f} GFLOP/s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_step", description=__doc__
    )
    parser.add_argument(
        "--model", nargs="+", choices=list(MODELS), default=list(DEFAULT_MODELS)
    )
    parser.add_argument(
        "--method", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS)
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write JSON here")
    args = parser.parse_args(argv)
    by_name = {plan.name: plan for plan in plans(quick=False)}
    results: dict[str, dict[str, Any]] = {}
    for model in args.model:
        plan = by_name[MODELS[model]]
        results[model] = {"description": plan.description, "methods": {}}
        for method in args.method:
            profile = profile_step(
                plan.build,
                plan.input_shape,
                method,
                batch_size=args.batch,
                steps=args.steps,
            )
            results[model]["methods"][method] = profile
            print(format_profile(model, method, profile), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
