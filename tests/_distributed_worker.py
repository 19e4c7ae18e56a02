"""The processes of the multi-process tests of `fwdeqx.distributed` (launched by
`tests/test_distributed_processes.py`; not collected by pytest). Run from the
repository root:

- `python -m tests._distributed_worker --coordinator HOST:PORT --num-processes N
  --process-id I --out DIR [--variants A,B] [--lose-peer]`: one process of N. It
  starts JAX's multi-process runtime on CPU, reads its shard of every global batch
  through `fwdeqx.data.batches` (Grain's `ShardByJaxProcess`), trains the variants
  for `NUM_STEPS` steps with `fwdeqx.distributed.make_step`, and writes
  `DIR/process-I.json`: its batches and every variant's final parameters and
  losses (and "fg-data-global": "fg-data" fed global `jax.Array`s). With
  `--lose-peer` the last process then kills itself (SIGKILL) and the others wait
  for it in a barrier, where JAX's heartbeat must stop them.
- `python -m tests._distributed_worker --reference --out DIR [--variants A,B]`:
  the same variants trained by single-process `fwdeqx.make_step` on the whole
  batches, into `DIR/reference.json`.
- `python -m tests._distributed_worker --recipe FILE ARGS...`: runs the recipe
  `FILE` of docs/distributed.md as one process with `fwdeqx.make_step` in place of
  the distributed step (and no runtime to start).
"""

import argparse
import json
import os
import signal
from pathlib import Path


NUM_STEPS = 3
BATCH_SIZE = 8  # the global batch: a multiple of 2 and 4 processes
HEARTBEAT_TIMEOUT = 3


def images_and_labels():
    """40 tiny 2x3 "images" (6 features) in 3 classes."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 2, 3), dtype=np.uint8)
    return images, (images.sum(axis=(1, 2)) % 3).astype(np.int32)


def batches(shard_options=None):
    from fwdeqx import data

    images, labels = images_and_labels()
    return data.batches(
        images,
        labels,
        batch_size=BATCH_SIZE,
        seed=1,
        num_steps=NUM_STEPS,
        shard_options=shard_options,
    )


def loss(model, batch):
    from fwdeqx.models import cross_entropy

    x, y = batch
    return cross_entropy(model, x, y)


def variants():
    """name -> (loss, estimator, parallelism, model): every step
    `fwdeqx.distributed` offers, on tiny models."""
    import jax

    import fwdeqx
    import fwdeqx.local as fl
    from fwdeqx.models import MLP

    mlp = MLP(key=jax.random.key(0), in_size=6, width=8, depth=1, out_size=3)
    local = fl.mlp(6, 8, 2, 3, groups=2, key=jax.random.key(0))
    return {
        "fg-data": (loss, fwdeqx.ForwardGradient(num_tangents=2), "data", mlp),
        "fg-tangent": (loss, fwdeqx.ForwardGradient(num_tangents=4), "tangent", mlp),
        "backprop-data": (loss, fwdeqx.Backprop(), "data", mlp),
        "spsa-data": (loss, fwdeqx.SPSA(eps=0.1, num_directions=2), "data", mlp),
        "activity-data": (
            fl.LocalLoss(),
            fl.ActivityPerturbation(num_tangents=2),
            "data",
            local,
        ),
        "local-weight-data": (
            fl.LocalLoss(),
            fl.LocalWeightPerturbation(num_tangents=2),
            "data",
            local,
        ),
    }


def optimizer():
    import optax

    return optax.sgd(0.1, momentum=0.9)


def train(make_step, name, batch_list):
    """`NUM_STEPS` steps of variant `name` with `make_step(loss, optimizer,
    estimator, parallelism)`: the final parameters (flattened) and the losses."""
    import equinox as eqx
    import jax
    import jax.tree_util as jtu
    import numpy as np

    loss_fn, estimator, parallelism, model = variants()[name]
    step = make_step(loss_fn, optimizer(), estimator, parallelism)
    state = step.init(model)
    values = []
    for key, batch in zip(
        jax.random.split(jax.random.key(7), NUM_STEPS), batch_list, strict=True
    ):
        model, state, value = step(model, state, batch, key)
        values.append(float(value))
    leaves = jtu.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    params = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
    return {"params": params.tolist(), "losses": values}


def reference(out: Path, names: list[str] | None) -> None:
    import fwdeqx

    def single_process_step(loss_fn, optimizer, estimator, parallelism):
        return fwdeqx.make_step(loss_fn, optimizer, estimator)

    whole = list(batches())
    names = names or list(variants())
    result = {name: train(single_process_step, name, whole) for name in names}
    (out / "reference.json").write_text(json.dumps(result))


def recipe(path: str, argv: list[str]) -> None:
    """Run the recipe on one process with `fwdeqx.make_step`."""
    import runpy
    import sys

    import fwdeqx
    import fwdeqx.distributed

    def single_process_step(loss_fn, optimizer, estimator, **_):
        return fwdeqx.make_step(loss_fn, optimizer, estimator)

    fwdeqx.distributed.initialize = lambda *args, **kwargs: None
    fwdeqx.distributed.make_step = single_process_step
    sys.argv = [path, *argv]
    runpy.run_path(path, run_name="__main__")


def main() -> None:
    import sys

    if sys.argv[1:2] == ["--recipe"]:
        return recipe(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variants", default=None)
    parser.add_argument("--lose-peer", action="store_true")
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    # Nothing may touch JAX's backend before `initialize`: no models yet.
    names = args.variants.split(",") if args.variants else None
    if args.reference:
        return reference(args.out, names)

    import grain
    import jax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    import fwdeqx.distributed

    fwdeqx.distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        timeout=60,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    local_batches = list(batches(grain.sharding.ShardByJaxProcess(drop_remainder=True)))
    whole = list(batches())  # tangent mode: every process passes the whole batch

    def make_step(loss_fn, optimizer, estimator, parallelism):
        return fwdeqx.distributed.make_step(
            loss_fn, optimizer, estimator, mesh=mesh, parallelism=parallelism
        )

    result = {
        "process_count": jax.process_count(),
        "batches": [[x.tolist(), y.tolist()] for x, y in local_batches],
        "variants": {},
    }
    for name in names or list(variants()):
        parallelism = variants()[name][2]
        feed = local_batches if parallelism == "data" else whole
        result["variants"][name] = train(make_step, name, feed)
    # The batch as global `jax.Array`s instead of process-local NumPy arrays.
    split = NamedSharding(mesh, PartitionSpec("batch"))
    global_batches = [
        tuple(jax.make_array_from_process_local_data(split, a) for a in batch)
        for batch in local_batches
    ]
    result["variants"]["fg-data-global"] = train(make_step, "fg-data", global_batches)
    out = args.out / f"process-{args.process_id}.json"
    out.write_text(json.dumps(result))
    if args.lose_peer:
        multihost_utils.sync_global_devices("results written")
        if args.process_id == args.num_processes - 1:
            os.kill(os.getpid(), signal.SIGKILL)
        multihost_utils.sync_global_devices("never reached: a peer is dead")


if __name__ == "__main__":
    main()
