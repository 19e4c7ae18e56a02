"""Communication and step time of `fwdeqx.distributed` on virtual CPU devices.

- Bytes all-reduced per step, read from the compiled HLO (four devices): forward
  gradient (data- and tangent-parallel) against data-parallel backprop, on the paper
  MLP and the 8x2048 MLP.
- Step time over 1, 2 and 4 virtual CPU devices.

The number of devices is fixed when JAX starts, so each device count runs in its own
subprocess (`python -m benchmarks.distributed --worker D`), which prints its result
as JSON; `run` gathers them. Nothing is written to disk here.

!!! Warning

    Virtual CPU devices (`--xla_force_host_platform_device_count`) share the same
    cores, so the step-time table shows the overhead of splitting the work, not a
    speed-up; only the communication table carries over to real devices.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


DEVICE_COUNTS = (1, 2, 4)
COMMUNICATION_DEVICES = 4
NUM_TANGENTS = 16  # a multiple of every device count, for tangent mode


def _variants(num_tangents: int) -> dict[str, dict[str, Any]]:
    return {
        "fg-data-K1": {"mode": "data", "num_tangents": 1},
        f"fg-data-K{num_tangents}": {"mode": "data", "num_tangents": num_tangents},
        f"fg-tangent-K{num_tangents}": {
            "mode": "tangent",
            "num_tangents": num_tangents,
        },
        "backprop-dp": {"mode": "backprop"},
    }


def _models(quick: bool) -> dict[str, tuple[int, int, int]]:
    """name -> (width, depth, batch size)."""
    if quick:
        return {"paper-mlp": (32, 2, 16), "deep-mlp": (64, 8, 32)}
    return {"paper-mlp": (1024, 2, 64), "deep-mlp": (2048, 8, 512)}


# ------------------------------------------------------------------ worker side


def _worker(num_devices: int, quick: bool) -> dict[str, Any]:
    import equinox as eqx
    import jax
    import jax.tree_util as jtu
    import optax

    import fwdeqx
    import fwdeqx.distributed as distributed
    from fwdeqx.models import MLP, cross_entropy

    from ._hlo import collective_bytes
    from ._timing import time_round_robin

    if jax.device_count() != num_devices:
        raise RuntimeError(
            f"expected {num_devices} devices, JAX sees {jax.device_count()}"
        )
    mesh = jax.make_mesh((num_devices,), ("batch",))
    optimizer = optax.sgd(1e-4)
    num_tangents = 4 if quick else NUM_TANGENTS

    def loss(model, batch):
        x, y = batch
        return cross_entropy(model, x, y)

    def make(variant):
        if variant["mode"] == "backprop":
            estimator, parallelism = fwdeqx.Backprop(), "data"
        else:
            estimator = fwdeqx.ForwardGradient(num_tangents=variant["num_tangents"])
            parallelism = variant["mode"]
        return distributed.make_step(
            loss, optimizer, estimator, mesh=mesh, parallelism=parallelism
        )

    def problem(width, depth, batch_size):
        model_key, x_key, y_key = jax.random.split(jax.random.key(0), 3)
        model = MLP(key=model_key, width=width, depth=depth)
        x = jax.random.uniform(x_key, (batch_size, 784))
        y = jax.random.randint(y_key, (batch_size,), 0, 10)
        return model, (x, y)

    result: dict[str, Any] = {"num_devices": num_devices}
    key = jax.random.key(1)

    if num_devices == COMMUNICATION_DEVICES:
        communication = {}
        for name, (width, depth, batch_size) in _models(quick).items():
            model, batch = problem(width, depth, batch_size)
            num_params = sum(
                leaf.size for leaf in jtu.tree_leaves(eqx.filter(model, eqx.is_array))
            )
            rows = {}
            for variant_name, variant in _variants(num_tangents).items():
                step = make(variant)
                text = step.lower(model, step.init(model), batch, key).compile()
                rows[variant_name] = collective_bytes(text.as_text())
            communication[name] = {
                "width": width,
                "depth": depth,
                "batch_size": batch_size,
                "num_params": int(num_params),
                "collective_bytes": rows,
            }
            del model, batch
        result["communication"] = communication

    width, depth, batch_size = _models(quick)["paper-mlp"]
    model, batch = problem(width, depth, batch_size)
    runners = {}
    for variant_name, variant in _variants(num_tangents).items():
        step = make(variant)
        state = step.init(model)
        runners[variant_name] = lambda step=step, state=state: step(
            model, state, batch, key
        )
    if num_devices == 1:  # the single-device step the distributed ones must equal
        for variant_name, estimator in (
            ("single-device-fg-K1", fwdeqx.ForwardGradient()),
            (
                f"single-device-fg-K{num_tangents}",
                fwdeqx.ForwardGradient(num_tangents=num_tangents),
            ),
            ("single-device-backprop", fwdeqx.Backprop()),
        ):
            step = fwdeqx.make_step(loss, optimizer, estimator)
            state = step.init(model)
            runners[variant_name] = lambda step=step, state=state: step(
                model, state, batch, key
            )
    steps, warmup = (3, 1) if quick else (20, 2)
    result["timing"] = {
        "model": f"MLP 784-{'-'.join([str(width)] * depth)}-10, batch {batch_size}",
        "steps": steps,
        "warmup": warmup,
        "timings": time_round_robin(runners, steps=steps, warmup=warmup),
    }
    return result


# ------------------------------------------------------------------ runner side


def _run_worker(num_devices: int, quick: bool) -> dict[str, Any]:
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={num_devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "benchmarks.distributed", "--worker"]
    command += [str(num_devices)] + (["--quick"] if quick else [])
    completed = subprocess.run(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"the {num_devices}-device worker failed:\n{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.2f} MiB" if num_bytes >= 2**20 else f"{num_bytes} B"


def _markdown(result: dict[str, Any]) -> str:
    communication = result["communication"]
    variants = list(next(iter(communication.values()))["collective_bytes"])
    lines = [
        f"### Bytes all-reduced per step ({COMMUNICATION_DEVICES} devices, "
        "from the compiled HLO)",
        "",
        "| model | parameters | " + " | ".join(variants) + " | backprop / FG K=1 |",
        "|---|---:|" + "---:|" * len(variants) + "---:|",
    ]
    for name, row in communication.items():
        reduced = {v: row["collective_bytes"][v]["all-reduce"] for v in variants}
        other = sum(
            b
            for v in variants
            for k, b in row["collective_bytes"][v].items()
            if k != "all-reduce"
        )
        cells = " | ".join(_mib(reduced[v]) for v in variants)
        ratio = reduced["backprop-dp"] / reduced["fg-data-K1"]
        lines.append(
            f"| {name} (784-{'-'.join([str(row['width'])] * row['depth'])}-10) | "
            f"{row['num_params']:,} | {cells} | {ratio:,.0f}x |"
        )
        if other:
            lines.append(f"| (other collectives: {other} B) | | |")
    lines += [
        "",
        f"### Step time on 1, 2, 4 virtual CPU devices, {result['timing_model']}",
        "",
        "Virtual CPU devices share the same cores: this shows the cost of splitting "
        "the work, not a speed-up.",
        "",
        "| variant | " + " | ".join(f"{d} dev ms" for d in DEVICE_COUNTS) + " |",
        "|---|" + "---:|" * len(DEVICE_COUNTS),
    ]
    names = list(result["timing"][str(DEVICE_COUNTS[0])]["timings"])
    for name in names:
        cells = []
        for d in DEVICE_COUNTS:
            timing = result["timing"][str(d)]["timings"].get(name)
            cells.append(f"{timing['median_ms']:.1f}" if timing else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(quick: bool = False) -> dict[str, Any]:
    """Run the suite; returns its results (and a `markdown` rendering)."""
    workers = {d: _run_worker(d, quick) for d in DEVICE_COUNTS}
    result: dict[str, Any] = {
        "communication": workers[COMMUNICATION_DEVICES]["communication"],
        "timing": {str(d): workers[d]["timing"] for d in DEVICE_COUNTS},
        "timing_model": workers[DEVICE_COUNTS[0]]["timing"]["model"],
        "note": (
            "Virtual CPU devices share the same cores, so step times do not show a "
            "speed-up; the all-reduce bytes are what carries over to real devices."
        ),
    }
    result["markdown"] = _markdown(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    parser.add_argument("--worker", type=int, default=None, metavar="DEVICES")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.quick)))
    else:
        print(run(quick=args.quick)["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
