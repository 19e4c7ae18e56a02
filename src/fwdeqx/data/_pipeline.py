"""The training input pipeline: a deterministic, resumable Grain iterator of shuffled
mini-batches, cheap enough to be noise next to a training step.

Design (measured with `python -m benchmarks.pipeline`, 2-core CPU): Grain's
per-record `MapDataset.shuffle(...).batch(...)` costs 0.5-1.1 ms per batch of 64,
because it calls Python once per image: a quarter or more of a 2.2 ms MLP backprop
step. So the shuffle and batching happen on *indices*, vectorised: each epoch is one
seeded permutation of all images (one ~10 ms argsort, amortised over the epoch's
937 batches), batch `i` of the epoch is a slice of it, and a Grain `MapDataset` over
steps gathers the batch from one contiguous uint8 array with a single NumPy
fancy-index and converts it to float32: ~35-90 us per batch in all (1-2% of a step).
Grain supplies the iterator and its checkpointable state. NumPy's own
`Generator.permutation` would be ~10 us per batch cheaper, but its stream may change
between NumPy releases; the hash-based permutation never does."""

import sys
from typing import Any, Literal

import grain
import numpy as np
from jaxtyping import Float32, Int, UInt8

from ._dataset import pixel_stats
from ._permute import permutation


Layout = Literal["flat", "image"]


def _scale_offset(
    images: np.ndarray, standardize: bool | tuple[float, float]
) -> tuple[float, float] | None:
    """`None` for plain `x / 255`; else `(mean, std)` of the [0, 1] pixels."""
    if standardize is False:
        return None
    if standardize is True:
        return pixel_stats(images)
    mean, std = standardize
    if not std > 0:
        raise ValueError(f"standardize: std must be positive, got {std}")
    return float(mean), float(std)


def _convert(pixels: np.ndarray, stats: tuple[float, float] | None) -> np.ndarray:
    """uint8 -> float32: `pixels / 255`, or `(pixels / 255 - mean) / std`."""
    if stats is None:
        return np.divide(pixels, np.float32(255), dtype=np.float32)
    mean, std = stats
    out = np.multiply(pixels, np.float32(1 / (255 * std)), dtype=np.float32)
    out -= np.float32(mean / std)
    return out


def _check_images(images: np.ndarray):
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError("images must be a uint8 NumPy array (n, [c,] h, w)")
    if images.ndim not in (3, 4):
        raise ValueError(
            f"images must be (n, h, w) or (n, c, h, w), got shape {images.shape}"
        )


def _shape(layout: Layout, batch: int, image: tuple[int, ...]) -> tuple[int, ...]:
    """`(batch, c*h*w)` flat, or `(batch, c, h, w)` with c = 1 for grey-scale."""
    if layout == "flat":
        return (batch, int(np.prod(image)))
    if layout == "image":
        return (batch, *image) if len(image) == 3 else (batch, 1, *image)
    raise ValueError(f"layout must be 'flat' or 'image', got {layout!r}")


def to_float(
    images: UInt8[np.ndarray, " n *image"],
    layout: Layout = "flat",
    standardize: bool | tuple[float, float] = False,
) -> Float32[np.ndarray, "n ..."]:
    """Convert whole uint8 images to float32, exactly as [`fwdeqx.data.batches`][]
    converts each batch (for evaluating on a whole split).

    **Arguments:**

    - `images`: uint8 `(n, h, w)` or, for colour, `(n, c, h, w)`, e.g.
        `ds.val_images`.
    - `layout`: `"flat"` gives `(n, h*w)` (`(n, c*h*w)`; MLP, logistic
        regression), `"image"` gives `(n, 1, h, w)` (`(n, c, h, w)`; CNN).
    - `standardize`: `False`: pixels / 255, in [0, 1]. `(mean, std)`: then
        subtract `mean` and divide by `std`. `True`: use the mean and std of
        `images` themselves; to standardise a validation split like the training
        one, pass the training statistics, `standardize=ds.pixel_stats()`.

    **Returns:**

    A float32 NumPy array of shape `(n, h*w)` or `(n, 1, h, w)` (colour:
    `(n, c*h*w)` or `(n, c, h, w)`).
    """
    _check_images(images)
    stats = _scale_offset(images, standardize)
    return _convert(images, stats).reshape(
        _shape(layout, len(images), images.shape[1:])
    )


class _ShuffledIndexBatches:
    """A Grain data source over training steps: element `step` holds the image
    indices of batch `step`. Epoch `e` is `permutation(n, seed, e)` cut into
    `n // batch_size` batches (the remainder is dropped; the next epoch is a new
    permutation), the semantics of Grain's `shuffle(seed) -> batch(drop_remainder)
    -> repeat`, computed once per epoch instead of once per image. With a shard
    `(index, count)`, element `step` holds only the `index`-th of `count` equal
    slices of global batch `step`."""

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        seed: int,
        num_steps: int,
        shard: tuple[int, int] = (0, 1),
    ):
        self.num_images, self.batch_size = num_images, batch_size
        self.seed, self.num_steps = seed, num_steps
        self.shard = shard
        self.batches_per_epoch = num_images // batch_size
        self._cache: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_steps:
            raise IndexError(index)
        epoch, index = divmod(index, self.batches_per_epoch)
        cached_epoch, order = self._cache
        if cached_epoch != epoch:
            order = permutation(self.num_images, self.seed, epoch)
            self._cache = (epoch, order)  # one assignment: safe under threads
        shard_index, shard_count = self.shard
        size = self.batch_size // shard_count
        start = index * self.batch_size + shard_index * size
        return order[start : start + size]


class _GatherBatch:
    """Grain map: indices -> `(x float32, y int32)` with one gather per array."""

    def __init__(self, images, labels, shape, stats):
        self.pixels = np.ascontiguousarray(images.reshape(len(images), -1))
        self.labels = labels
        self.shape, self.stats = shape, stats

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _convert(self.pixels[indices], self.stats).reshape(self.shape)
        return x, self.labels[indices]


class BatchIterator:
    """The iterator returned by [`fwdeqx.data.batches`][]: yields `(x, y)` NumPy
    batches; `get_state()` / `set_state(state)` checkpoint and restore its position
    (the state is a small JSON-ready dict). A restored iterator continues with
    exactly the batches the uninterrupted one would have given.

    `dataset` is the underlying `grain.MapDataset` (indexable by step)."""

    def __init__(self, dataset: grain.MapDataset, config: dict[str, Any]):
        self.dataset = dataset
        self.config = config
        options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        self._iterator = iter(dataset.to_iter_dataset(options))

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return next(self._iterator)

    def __len__(self) -> int:
        return len(self.dataset)

    def get_state(self) -> dict[str, Any]:
        """The iterator's position, plus the configuration it belongs to."""
        return {"grain": self._iterator.get_state(), "config": dict(self.config)}

    def set_state(self, state: dict[str, Any]):
        """Continue from a state returned by `get_state` of an iterator with the same
        configuration (same data size, batch size, seed, steps, layout). The
        processes of a sharded pipeline advance together, so a state saved by any
        one of them restores every process's shard, and the unsharded pipeline."""
        if _unsharded(state.get("config")) != _unsharded(self.config):
            raise ValueError(
                "iterator state belongs to a different pipeline: saved "
                f"{state.get('config')}, this one {self.config}"
            )
        self._iterator.set_state(state["grain"])


def _unsharded(config: Any) -> Any:
    """A pipeline's configuration without its shard (the same for every process)."""
    if not isinstance(config, dict):
        return config
    return {key: value for key, value in config.items() if key != "shard"}


def _shard(options: Any, batch_size: int) -> tuple[int, int]:
    """`(shard_index, shard_count)` from Grain's shard options."""
    if options is None:
        return (0, 1)
    if not isinstance(options, grain.sharding.ShardOptions):
        raise TypeError(
            "shard_options must be a grain.sharding.ShardOptions, e.g. "
            f"grain.sharding.ShardByJaxProcess(), got {options!r}"
        )
    index, count = options.shard_index, options.shard_count
    if not 0 <= index < count:
        raise ValueError(f"shard_index must be in 0..{count - 1}, got {index}")
    if batch_size % count != 0:
        raise ValueError(
            f"batch_size {batch_size} is the global batch, split into {count} equal "
            f"shards (one per process), so it must be a multiple of {count}"
        )
    return index, count


def batches(
    images: UInt8[np.ndarray, " n *image"],
    labels: Int[np.ndarray, " n"],
    *,
    batch_size: int = 64,
    seed: int = 0,
    num_steps: int | None = None,
    layout: Layout = "flat",
    standardize: bool | tuple[float, float] = False,
    shard_options: grain.sharding.ShardOptions | None = None,
) -> BatchIterator:
    """Shuffled mini-batches for training, deterministic and resumable.

    Each epoch is a fresh seeded permutation of the images, cut into
    `len(images) // batch_size` full batches (the remainder of each epoch is
    dropped); epochs repeat until `num_steps` batches have been produced.

    **Arguments:**

    - `images`: uint8 `(n, h, w)` or `(n, c, h, w)`, e.g. `ds.train_images`
        (kept as is: only each batch is converted to float32).
    - `labels`: integer `(n,)`.
    - `batch_size`: images per batch (at most `n`).
    - `seed`: non-negative int; same seed, same batches, bit for bit, on every
        platform (the permutations come from a fixed integer hash, not NumPy's RNG).
    - `num_steps`: number of batches; `None` for an endless iterator.
    - `layout`: `"flat"`: `x` is `(batch_size, h*w)` (colour: `c*h*w`);
        `"image"`: `(batch_size, 1, h, w)` (colour: `(batch_size, c, h, w)`).
    - `standardize`: as in [`fwdeqx.data.to_float`][] (`True` uses the statistics
        of `images`, i.e. of the training set).
    - `shard_options`: for training on several processes, Grain's
        `grain.sharding.ShardByJaxProcess()` (or `ShardOptions(shard_index,
        shard_count)`): this process reads only its share of every global batch of
        `batch_size`, the `shard_index`-th of `shard_count` equal slices, so
        `batch_size` must be a multiple of `shard_count`. The processes' shards of
        a step, in shard order, make up exactly the batch one process reads
        without sharding. `None` (default): the whole batch.

    **Returns:**

    A [`fwdeqx.data.BatchIterator`][] of `(x, y)`: `x` float32 (in [0, 1] unless
    standardised), `y` int32 `(batch_size,)` (`batch_size // shard_count` with
    `shard_options`), both NumPy arrays (a jitted step moves them to the device).

    !!! Example

        ```python
        it = data.batches(ds.train_images, ds.train_labels, seed=0, num_steps=1000)
        for step, (x, y) in enumerate(it):
            model, opt_state, loss = train_step(model, opt_state, (x, y), key)
            if step % 100 == 0:
                checkpoint = it.get_state()  # later: it.set_state(checkpoint)
        ```
    """
    _check_images(images)
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if isinstance(batch_size, bool) or not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n}, got {batch_size}")
    if isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    if num_steps is not None and (isinstance(num_steps, bool) or num_steps < 0):
        raise ValueError(
            f"num_steps must be a non-negative int or None, got {num_steps}"
        )
    shard = _shard(shard_options, batch_size)
    shape = _shape(layout, batch_size // shard[1], images.shape[1:])
    stats = _scale_offset(images, standardize)
    steps = sys.maxsize if num_steps is None else num_steps
    source = _ShuffledIndexBatches(n, batch_size, seed, steps, shard)
    gather = _GatherBatch(images, np.asarray(labels, dtype=np.int32), shape, stats)
    dataset = grain.MapDataset.source(source).map(gather)
    config = {
        "num_images": n,
        "batch_size": batch_size,
        "seed": seed,
        "num_steps": num_steps,
        "layout": layout,
        "standardize": None if stats is None else list(stats),
    }
    if shard != (0, 1):  # unsharded states stay as they were
        config["shard"] = list(shard)
    return BatchIterator(dataset, config)
