"""The training loop every experiment shares: steps run in compiled `lax.scan` chunks.

A `Program` is one jitted chunk function, `chunk(carry, consts, xs, ys, start) ->
(carry, losses)`, with its executables compiled once per input shape; a `Cache`
shares programs and evaluations between the runs of a grid (seeds differ only in
array leaves). `Training` is one run's (or one batch of runs') state, and
`train_chunks` advances it chunk by chunk: it loads the next chunk of batches on
the host while the device computes, and yields each chunk's losses with its
wall time (data loading included, compilation excluded). Whatever a run does
between chunks (evaluation, divergence, records) is its own, done at the yield.
"""

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

import fwdeqx

from ._processes import is_writer, local, replicate, shard_steps, train_mesh


EVAL_BATCH = 1000
# A run has diverged when a training loss is non-finite or exceeds this multiple of
# the first one (ln 10 ≈ 2.3 at initialisation on 10 classes, so about 23).
DIVERGENCE_FACTOR = 10.0
Evaluate = Callable[[PyTree], tuple[float, float]]


def under_standard_promotion(fn: Callable) -> Callable:
    """`fn`, traced under standard dtype promotion: optax's Adam mixes its int32
    step count with float constants, which the strict promotion of the tests
    rejects."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with jax.numpy_dtype_promotion("standard"):
            return fn(*args, **kwargs)

    return wrapper


def data_identity(dataset: Any) -> str:
    """`<num_train>+<num_val>-<first 12 hex digits of the content fingerprint>`: part
    of every run's id, so a resume never counts runs made on other data (another
    folder, another split, a changed file)."""
    return (
        f"{len(dataset.train_labels)}+{len(dataset.val_labels)}-"
        f"{dataset.fingerprint[:12]}"
    )


def _steps(
    body: Callable, carry: PyTree, xs: Array, ys: Array, start: Int[Array, ""]
) -> tuple[PyTree, Array]:
    indices = start + jnp.arange(xs.shape[0], dtype=start.dtype)
    return jax.lax.scan(body, carry, (xs, ys, indices))


def make_chunk_fn(step: fwdeqx.TrainStep, static: PyTree) -> Callable:
    """`chunk((params, opt_state), key, xs, ys, start) -> ((params, opt_state),
    losses)`: `len(xs)` steps of `step` (estimate, optax update, apply). Step `i`
    uses `fold_in(key, i)`, so the numbers do not depend on how the run is cut
    into chunks.

    The steps run in one `lax.scan`, except for a model with convolutions, whose
    chunk is a Python loop over one jitted step (`SteppedChunk`): XLA's CPU
    backend runs convolutions inside a loop 7 to 8 times slower than in a jitted
    step of their own (docs/local-losses.md)."""

    def one_step(carry, key: PRNGKeyArray, x, y, index: Int[Array, ""]):
        params, opt_state = carry
        model = eqx.combine(params, static)
        model, opt_state, loss = step(
            model, opt_state, (x, y), jax.random.fold_in(key, index)
        )
        return (eqx.filter(model, eqx.is_array), opt_state), loss

    if has_convolutions(static):
        return SteppedChunk(jax.jit(one_step, donate_argnums=0))

    def chunk(carry, key: PRNGKeyArray, xs, ys, start: Int[Array, ""]):
        def body(carry, inputs):
            x, y, index = inputs
            return one_step(carry, key, x, y, index)

        return _steps(body, carry, xs, ys, start)

    return jax.jit(chunk, donate_argnums=0)


def has_convolutions(tree: PyTree) -> bool:
    """Whether `tree` (a model, or its static part) holds an `eqx.nn.Conv`."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, eqx.nn.Conv))
    return any(isinstance(leaf, eqx.nn.Conv) for leaf in leaves)


@dataclasses.dataclass(frozen=True)
class SteppedChunk:
    """A chunk run as a Python loop over one jitted step `step(carry, key, x, y,
    index) -> (carry, loss)`, with the interface of a jitted chunk function:
    `lower(carry, consts, xs, ys, start).compile()` gives `run(carry, consts, xs,
    ys, start) -> (carry, losses)`."""

    step: Any

    def lower(self, carry, consts, xs, ys, start) -> "SteppedChunk._Lowered":
        return SteppedChunk._Lowered(
            self.step.lower(carry, consts, xs[0], ys[0], start)
        )

    @dataclasses.dataclass(frozen=True)
    class _Lowered:
        lowered: Any

        def compile(self) -> Callable:
            compiled = self.lowered.compile()

            def run(carry, consts, xs, ys, start):
                losses = []
                for i in range(xs.shape[0]):
                    carry, loss = compiled(carry, consts, xs[i], ys[i], start + i)
                    losses.append(loss)
                return carry, jnp.stack(losses)

            return run


def make_batched_chunk_fn(
    make_step: Callable[[Array], fwdeqx.TrainStep],
    static: PyTree,
    divergence_factor: float = DIVERGENCE_FACTOR,
) -> Callable:
    """The batched counterpart of `make_chunk_fn` for runs that differ only in seed
    and learning rate: `chunk((params, opt_state, alive, threshold), (lrs, keys),
    xs, ys, start)`, every array with a leading member axis (`xs`, `ys` after the
    step axis), `make_step(lr)` a member's step at its (traced) learning rate. A
    member whose loss is non-finite or above its threshold (`divergence_factor`
    times its first loss, set at step 0) is frozen from that step on (`alive`
    turns false); nothing is reduced across members.

    Returns `((params, opt_state, alive, threshold), losses)`, losses `(steps,
    members)`."""

    def member_step(params, opt_state, lr, x, y, key):
        model = eqx.combine(params, static)
        model, opt_state, loss = make_step(lr)(model, opt_state, (x, y), key)
        return eqx.filter(model, eqx.is_array), opt_state, loss

    def chunk(
        carry: tuple[PyTree, Any, Bool[Array, " m"], Float[Array, " m"]],
        consts: tuple[Float[Array, " m"], PRNGKeyArray],
        xs: Float[Array, "steps m ..."],
        ys: Int[Array, "steps m batch"],
        start: Int[Array, ""],
    ):
        lrs, keys = consts

        def body(carry, inputs):
            params, opt_state, alive, threshold = carry
            x, y, index = inputs
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, index)
            new_params, new_state, losses = eqx.filter_vmap(member_step)(
                params, opt_state, lrs, x, y, step_keys
            )
            first = (index == 0) & jnp.isfinite(losses)
            threshold = jnp.where(first, divergence_factor * losses, threshold)
            alive = alive & jnp.isfinite(losses) & (losses <= threshold)

            def keep(new, old):
                mask = alive.reshape(alive.shape + (1,) * (new.ndim - 1))
                return jnp.where(mask, new, old)

            params = jax.tree.map(keep, new_params, params)
            opt_state = jax.tree.map(keep, new_state, opt_state)
            return (params, opt_state, alive, threshold), losses

        return _steps(body, carry, xs, ys, start)

    return jax.jit(chunk, donate_argnums=0)


def stack(trees: list[PyTree]) -> PyTree:
    """`trees` stacked leaf by leaf on a new leading (member) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def take(tree: PyTree, indices: np.ndarray | int) -> PyTree:
    """The members `indices` of every leaf of `tree`."""
    return jax.tree.map(lambda leaf: leaf[indices], tree)


@dataclasses.dataclass
class Program:
    """A jitted chunk function and its executables, compiled once per input shape."""

    fn: Callable
    compiled: dict[tuple[int, ...], Any] = dataclasses.field(default_factory=dict)

    def compile(self, *arguments: Any) -> tuple[Any, float]:
        """The executable for `arguments` (`(carry, consts, xs, ys, start)`) and
        the seconds its compilation took (0 when it was compiled before)."""
        shape = arguments[2].shape
        if shape in self.compiled:
            return self.compiled[shape], 0.0
        start = time.perf_counter()
        self.compiled[shape] = self.fn.lower(*arguments).compile()
        return self.compiled[shape], time.perf_counter() - start


@dataclasses.dataclass
class Cache:
    """What the runs of a grid share: programs and evaluations, each made once per
    key (a run's configuration without its seed)."""

    programs: dict[Hashable, Program] = dataclasses.field(default_factory=dict)
    evaluations: dict[Hashable, Evaluate] = dataclasses.field(default_factory=dict)

    def program(self, key: Hashable, make: Callable[[], Callable]) -> Program:
        if key not in self.programs:
            self.programs[key] = Program(make())
        return self.programs[key]

    def evaluation(self, key: Hashable, make: Callable[[], Evaluate]) -> Evaluate:
        if key not in self.evaluations:
            self.evaluations[key] = make()
        return self.evaluations[key]


@dataclasses.dataclass
class Training:
    """The state a program advances: `carry` (donated, replaced after each
    chunk), `consts` (keys, learning rates), the steps done so far, `members`, the
    columns of a batched chunk's inputs still trained (`None`: one run), and
    `data_state`, the data iterator's position after `done` steps (set by
    `train_chunks` when its chunks have one).

    With several processes (`train_mesh()`), `carry` and `consts` are replicated
    over every device and each chunk's batches are split over them."""

    program: Program
    carry: PyTree
    consts: PyTree
    done: int = 0
    members: np.ndarray | None = None
    data_state: dict[str, Any] | None = None
    mesh: Mesh | None = dataclasses.field(init=False, default=None)

    def __post_init__(self):
        self.mesh = train_mesh()
        if self.mesh is not None:
            self.carry, self.consts = replicate((self.carry, self.consts), self.mesh)

    def arguments(self, xs: np.ndarray, ys: np.ndarray) -> tuple:
        """The program's arguments for the next chunk of batches `xs, ys` (this
        process's rows of them, with several processes)."""
        if self.mesh is None:
            return (self.carry, self.consts, xs, ys, jnp.int32(self.done))
        return (
            self.carry,
            self.consts,
            shard_steps(xs, self.mesh),
            shard_steps(ys, self.mesh),
            np.int32(self.done),
        )


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk's outcome: its steps, losses, wall and compile seconds."""

    size: int
    losses: np.ndarray
    seconds: float
    compile_seconds: float


def train_chunks(
    training: Training, chunks: Iterator[tuple[np.ndarray, np.ndarray]], sizes: list
) -> Iterator[Chunk]:
    """Run `training` over `chunks` (stacked batches, one chunk per entry of
    `sizes`), yielding after each chunk; the consumer may stop at any yield.

    `training.done` already counts the chunk yielded, and, when `chunks` has a
    `get_state` (a `StackedChunks`), `training.data_state` is the data position
    after it: what a checkpoint taken at the yield needs."""
    if not sizes:
        return
    position = getattr(chunks, "get_state", None)
    xs, ys = next(chunks)
    state = position() if position else None
    for index, size in enumerate(sizes):
        if training.members is not None:
            xs, ys = xs[:, training.members], ys[:, training.members]
        arguments = training.arguments(xs, ys)
        executable, compile_seconds = training.program.compile(*arguments)
        start = time.perf_counter()
        training.carry, losses = executable(*arguments)
        chunk_state = state
        if index + 1 < len(sizes):
            xs, ys = next(chunks)  # overlaps with the device computing this chunk
            state = position() if position else None
        losses = np.asarray(local(losses))
        seconds = time.perf_counter() - start
        training.done += size
        training.data_state = chunk_state
        yield Chunk(size, losses, seconds, compile_seconds)


def first_divergent_step(losses: np.ndarray, threshold: float) -> int | None:
    """Index of the first loss that is non-finite or above `threshold`, if any."""
    bad = ~np.isfinite(losses) | (losses > threshold)
    return int(np.argmax(bad)) if bad.any() else None


def new_curves(names: tuple[str, ...]) -> dict[str, list]:
    """Empty curves of a run record, one list per name, filled by `add_point`."""
    return {name: [] for name in names}


def add_point(
    curves: dict[str, list],
    step: int,
    losses: np.ndarray,
    evaluation: tuple[float, float],
    seconds: float,
) -> None:
    """Append one point to the five `curves` (in their order): `step`, the mean of
    the training `losses` since the last point, the held-out loss (`None` when not
    finite) and accuracy, and the training time so far."""
    loss, accuracy = evaluation
    point = (step, float(np.mean(losses)), finite_or_none(loss), accuracy, seconds)
    for curve, value in zip(curves.values(), point, strict=True):
        curve.append(value)


def make_evaluate(
    static: PyTree, images: Float[np.ndarray, "n ..."], labels: Int[np.ndarray, " n"]
) -> Evaluate:
    """`evaluate(params) -> (mean cross-entropy, accuracy)` of the model
    `eqx.combine(params, static)` on a whole split, in padded batches of
    `EVAL_BATCH`, one jitted call per batch (one compile, bounded memory; a Python
    loop rather than `lax.map`, since XLA's CPU convolutions run several times
    slower inside a loop, see `SteppedChunk`). With several processes, process 0
    evaluates its copy of the parameters; the others get NaN (they write
    nothing)."""
    count = len(labels)
    size = min(EVAL_BATCH, count)
    num_batches = math.ceil(count / size)
    pad = num_batches * size - count
    xs = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    ys = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    weights = np.concatenate([np.ones(count, np.float32), np.zeros(pad, np.float32)])
    batches = [
        tuple(jnp.asarray(a[i * size : (i + 1) * size]) for a in (xs, ys, weights))
        for i in range(num_batches)
    ]

    @jax.jit
    def sums(params, x, y, w):
        logits = jax.vmap(eqx.combine(params, static))(x)
        losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        return jnp.stack([jnp.sum(losses[:, 0] * w), jnp.sum(correct * w)])

    def evaluate(params) -> tuple[float, float]:
        if not is_writer():  # only process 0 records evaluations
            return math.nan, math.nan
        params = local(params)
        per_batch = jnp.stack([sums(params, *batch) for batch in batches])
        loss_sum, correct = jax.device_get(jnp.sum(per_batch, axis=0))
        return float(loss_sum) / count, float(correct) / count

    return evaluate


class StackedChunks:
    """The `(x, y)` batches of `batches`, stacked `size` at a time for each of
    `sizes`; `get_state`/`set_state` are the batches' position (a
    `fwdeqx.data.BatchIterator`'s), for checkpoints."""

    def __init__(self, batches: Any, sizes: list[int]):
        self.batches = batches
        self._iterator = iter(batches)
        self._sizes = iter(sizes)

    def __iter__(self) -> "StackedChunks":
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = [next(self._iterator) for _ in range(next(self._sizes))]
        return (
            np.stack([np.asarray(x) for x, _ in pairs]),
            np.stack([np.asarray(y) for _, y in pairs]),
        )

    def get_state(self) -> dict[str, Any]:
        return self.batches.get_state()

    def set_state(self, state: dict[str, Any], sizes: list[int]) -> None:
        """Continue from `state`, stacking `sizes` from there."""
        self.batches.set_state(state)
        self._sizes = iter(sizes)


def finite_or_none(value: float) -> float | None:
    """`value`, or `None` (JSON `null`) where it is NaN or infinite."""
    return value if math.isfinite(value) else None


def progress_bar(show: bool, **options: Any) -> Any:
    """A `tqdm` bar on stderr (`options` as in `tqdm`), gone when closed; it shows
    nothing unless `show`."""
    from tqdm import tqdm

    return tqdm(leave=False, file=sys.stderr, disable=not show, **options)
