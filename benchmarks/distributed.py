"""Communication and step time of `fwdeqx.distributed`.

- Bytes all-reduced per step, read from the compiled HLO of one step over four
  devices, for every step `fwdeqx.distributed` offers: forward gradient (data- and
  tangent-parallel), backprop and SPSA on the paper MLP and the 8x2048 MLP, and
  the `fwdeqx.local` estimators on the quick local-loss network. With one device
  per process (CPU), every one of these bytes crosses processes.
- Step time with 1, 2 and 4 OS processes on 127.0.0.1 (JAX's multi-process
  runtime, Gloo collectives over loopback), one device each, as ratios to one
  process.
- With `--link` (Linux, root: `unshare -n` and `tc`): forward gradient against
  backprop, data-parallel on 2 processes in a network namespace whose loopback is
  rate-limited by a `tbf` qdisc (100 Mbit/s and 1 Gbit/s).

The byte counts come from a subprocess with four virtual CPU devices
(`python -m benchmarks.distributed --bytes-worker`); the step times from N
processes started together (`--process-worker N I PORT`), of which process 0
prints the timings as JSON. Nothing is written to disk here.

!!! Warning

    On one machine the processes share its cores (two on the reference VM), so
    more processes do not mean more compute: the step-time ratios show what the
    collectives and the sharing cost, not a speed-up. Only the bytes carry over
    to real hosts.
"""

import argparse
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


PROCESS_COUNTS = (1, 2, 4)
COMMUNICATION_DEVICES = 4
NUM_TANGENTS = 16  # a multiple of every device count, for tangent mode
TIMEOUT = 600  # seconds for one launch
ROOT = Path(__file__).resolve().parent.parent


def _models(quick: bool) -> dict[str, tuple[str, int, int, int]]:
    """name -> (kind, width, depth, batch size)."""
    if quick:
        return {
            "paper-mlp": ("mlp", 32, 2, 16),
            "deep-mlp": ("mlp", 64, 8, 32),
            "local-mlp": ("local", 32, 2, 16),
        }
    return {
        "paper-mlp": ("mlp", 1024, 2, 64),
        "deep-mlp": ("mlp", 2048, 8, 512),
        "local-mlp": ("local", 256, 2, 64),
    }


def _variants(kind: str, num_tangents: int) -> dict[str, tuple[str, str, int]]:
    """name -> (estimator, parallelism, K) for a model kind."""
    if kind == "local":
        return {
            "activity-data": ("activity", "data", 1),
            "local-weight-data": ("local-weight", "data", 1),
            "fg-data-K1": ("fg", "data", 1),
            "backprop-dp": ("backprop", "data", 1),
        }
    return {
        "fg-data-K1": ("fg", "data", 1),
        f"fg-data-K{num_tangents}": ("fg", "data", num_tangents),
        f"fg-tangent-K{num_tangents}": ("fg", "tangent", num_tangents),
        "backprop-dp": ("backprop", "data", 1),
        "spsa-data": ("spsa", "data", 1),
    }


# Step times: fewer variants (K = 4 in tangent mode: a multiple of 1, 2 and 4).
_TIMED = {
    "paper-mlp": {
        "fg-data-K1": ("fg", "data", 1),
        "fg-tangent-K4": ("fg", "tangent", 4),
        "backprop-dp": ("backprop", "data", 1),
        "spsa-data": ("spsa", "data", 1),
    },
    "local-mlp": {
        "activity-data": ("activity", "data", 1),
        "local-weight-data": ("local-weight", "data", 1),
    },
}


# Over a slow link: the paper MLP's forward gradient against backprop.
_LINK = {
    "paper-mlp": {
        "fg-data-K1": ("fg", "data", 1),
        "backprop-dp": ("backprop", "data", 1),
    }
}
LINK_RATES = ("100mbit", "1gbit")


# ------------------------------------------------------------------ worker side


def _setup(
    name: str, spec: tuple[str, str, int], quick: bool, mesh
) -> tuple[Any, Any, Any]:
    """(distributed step, model, global batch as NumPy arrays) for model `name`
    and `spec = (estimator, parallelism, K)`."""
    import jax
    import numpy as np
    import optax

    import fwdeqx
    import fwdeqx.distributed as distributed
    import fwdeqx.local as fl
    from fwdeqx.models import MLP, cross_entropy

    kind, width, depth, batch_size = _models(quick)[name]
    estimator_name, parallelism, k = spec
    model_key, x_key, y_key = jax.random.split(jax.random.key(0), 3)
    if kind == "local":
        model = fl.mlp(784, width, depth, 10, groups=min(64, width), key=model_key)
        loss = fl.LocalLoss()
    else:
        model = MLP(key=model_key, width=width, depth=depth)

        def loss(model, batch):
            x, y = batch
            return cross_entropy(model, x, y)

    estimator = {
        "fg": lambda: fwdeqx.ForwardGradient(num_tangents=k),
        "backprop": fwdeqx.Backprop,
        "spsa": fwdeqx.SPSA,
        "activity": lambda: fl.ActivityPerturbation(num_tangents=k),
        "local-weight": lambda: fl.LocalWeightPerturbation(num_tangents=k),
    }[estimator_name]()
    step = distributed.make_step(
        loss, optax.sgd(1e-4), estimator, mesh=mesh, parallelism=parallelism
    )
    x = np.asarray(jax.random.uniform(x_key, (batch_size, 784)))
    y = np.asarray(jax.random.randint(y_key, (batch_size,), 0, 10))
    return step, model, (x, y)


def _bytes_worker(quick: bool) -> dict[str, Any]:
    import equinox as eqx
    import jax
    import jax.tree_util as jtu

    from ._hlo import collective_bytes

    if jax.device_count() != COMMUNICATION_DEVICES:
        raise RuntimeError(
            f"expected {COMMUNICATION_DEVICES} devices, JAX sees {jax.device_count()}"
        )
    mesh = jax.make_mesh((COMMUNICATION_DEVICES,), ("batch",))
    num_tangents = 4 if quick else NUM_TANGENTS
    communication = {}
    for name, (kind, width, depth, batch_size) in _models(quick).items():
        rows, num_params = {}, 0
        for variant, spec in _variants(kind, num_tangents).items():
            step, model, batch = _setup(name, spec, quick, mesh)
            num_params = sum(
                leaf.size for leaf in jtu.tree_leaves(eqx.filter(model, eqx.is_array))
            )
            lowered = step.lower(model, step.init(model), batch, jax.random.key(1))
            rows[variant] = collective_bytes(lowered.compile().as_text())
        communication[name] = {
            "kind": kind,
            "width": width,
            "depth": depth,
            "batch_size": batch_size,
            "num_params": int(num_params),
            "collective_bytes": rows,
        }
    return {"communication": communication}


def _process_worker(
    num_processes: int, process_id: int, port: int, quick: bool, timed: dict
) -> dict[str, Any]:
    import jax

    import fwdeqx.distributed

    from ._timing import time_round_robin

    fwdeqx.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    key = jax.random.key(1)
    runners = {}
    for name, variants in timed.items():
        for variant, spec in variants.items():
            step, model, batch = _setup(name, spec, quick, mesh)
            if step.parallelism == "data":  # this process's rows of the batch
                batch = tuple(
                    array.reshape(num_processes, -1, *array.shape[1:])[process_id]
                    for array in batch
                )
            state = step.init(model)
            runners[f"{name}/{variant}"] = functools.partial(
                step, model, state, batch, key
            )
    steps, warmup = (3, 1) if quick else (10, 2)
    return {
        "num_processes": num_processes,
        "steps": steps,
        "timings": time_round_robin(runners, steps=steps, warmup=warmup),
    }


# ------------------------------------------------------------------ runner side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SELF = [sys.executable, "-m", "benchmarks.distributed"]


def _launch(commands: list[list[str]], env: dict[str, str]) -> list[str]:
    """Run the commands at once; their stdouts. Every process group left is
    killed, whatever happens."""
    running = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for command in commands
    ]
    try:
        outputs = [process.communicate(timeout=TIMEOUT) for process in running]
    finally:
        for process in running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    for process, (_, stderr) in zip(running, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"{process.args} failed:\n{stderr[-4000:]}")
    return [stdout for stdout, _ in outputs]


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def _run_bytes(quick: bool) -> dict[str, Any]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flag = f"--xla_force_host_platform_device_count={COMMUNICATION_DEVICES}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    extra = ["--quick"] if quick else []
    (stdout,) = _launch([[*_SELF, "--bytes-worker", *extra]], env)
    return _last_json(stdout)["communication"]


def _run_processes(num_processes: int, quick: bool) -> dict[str, Any]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = str(_free_port())
    extra = ["--quick"] if quick else []
    commands = [
        [*_SELF, "--process-worker", str(num_processes), str(i), port, *extra]
        for i in range(num_processes)
    ]
    return _last_json(_launch(commands, env)[0])


def _run_link(rate: str, quick: bool) -> dict[str, Any]:
    """Two processes in a new network namespace whose loopback is limited to
    `rate` by a token bucket; both directions share it."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = str(_free_port())
    workers = [
        shlex.join(
            [*_SELF, "--process-worker", "2", str(i), port, "--link"]
            + (["--quick"] if quick else [])
        )
        for i in range(2)
    ]
    script = (
        "ip link set lo up && "
        f"tc qdisc add dev lo root tbf rate {rate} burst 256kb latency 100ms && "
        f"{{ {workers[1]} > /dev/null & {workers[0]}; wait; }}"
    )
    (stdout,) = _launch([["unshare", "-n", "sh", "-c", script]], env)
    return _last_json(stdout)


def run_link(quick: bool = False) -> dict[str, Any]:
    """Forward gradient against backprop, data-parallel on 2 processes over a
    rate-limited loopback, for each of `LINK_RATES`."""
    result = {rate: _run_link(rate, quick) for rate in LINK_RATES}
    lines = [
        "| step | " + " | ".join(f"{rate} ms" for rate in LINK_RATES) + " |",
        "|---|" + "---:|" * len(LINK_RATES),
    ]
    for name in result[LINK_RATES[0]]["timings"]:
        cells = [
            f"{result[rate]['timings'][name]['median_ms']:.1f}" for rate in LINK_RATES
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return {"timing": result, "markdown": "\n".join(lines)}


def _mib(num_bytes: float) -> str:
    if num_bytes >= 2**20:
        return f"{num_bytes:,} B ({num_bytes / 2**20:,.2f} MiB)"
    return f"{num_bytes:,} B"


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### Bytes all-reduced per step ({COMMUNICATION_DEVICES} devices, from the "
        "compiled HLO)",
        "",
        "| model | parameters | step | all-reduce | other collectives |",
        "|---|---:|---|---:|---:|",
    ]
    for name, row in result["communication"].items():
        for variant, counts in row["collective_bytes"].items():
            other = sum(b for k, b in counts.items() if k != "all-reduce")
            lines.append(
                f"| {name} | {row['num_params']:,} | {variant} | "
                f"{_mib(counts['all-reduce'])} | {other:,} B |"
            )
    counts = [str(n) for n in PROCESS_COUNTS]
    lines += [
        "",
        "### Step time on 1, 2, 4 processes (loopback, shared cores)",
        "",
        "| step | 1 process ms | " + " | ".join(f"{n} / 1" for n in counts[1:]) + " |",
        "|---|---:|" + "---:|" * (len(counts) - 1),
    ]
    timing = result["timing"]
    for name in timing["1"]["timings"]:
        one = timing["1"]["timings"][name]["median_ms"]
        ratios = [timing[n]["timings"][name]["median_ms"] / one for n in counts[1:]]
        cells = " | ".join(f"{r:.2f}" for r in ratios)
        lines.append(f"| {name} | {one:.1f} | {cells} |")
    return "\n".join(lines)


def run(quick: bool = False) -> dict[str, Any]:
    """Run the suite; returns its results (and a `markdown` rendering)."""
    result: dict[str, Any] = {
        "communication": _run_bytes(quick),
        "timing": {str(n): _run_processes(n, quick) for n in PROCESS_COUNTS},
        "note": (
            "The processes share the machine's cores: step-time ratios show the cost "
            "of the collectives and the sharing, not a speed-up; the all-reduce bytes "
            "are what carries over to real hosts."
        ),
    }
    result["markdown"] = _markdown(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    parser.add_argument("--bytes-worker", action="store_true")
    parser.add_argument(
        "--process-worker", type=int, nargs=3, metavar=("N", "I", "PORT")
    )
    parser.add_argument("--link", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.bytes_worker:
        print(json.dumps(_bytes_worker(args.quick)))
    elif args.process_worker:
        num_processes, process_id, port = args.process_worker
        timed = _LINK if args.link else _TIMED
        result = _process_worker(num_processes, process_id, port, args.quick, timed)
        if process_id == 0:
            print(json.dumps(result))
    elif args.link:
        print(run_link(quick=args.quick)["markdown"])
    else:
        print(run(quick=args.quick)["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
